"""Every schema key does something, or is refused: no key is accepted and ignored.

For each key of every schema section (nested tables included) the test trains the tiny model
for a few steps twice, with the key at its default and at another value (plus the companion
settings it needs, e.g. huber_c with loss_type = "huber"), and compares what the run left
behind: losses, learning rates, gradient norms, messages, and every file written (names and
contents). A key whose value changes none of that must be refused by --check with a reason,
or be listed in ONLY_ELSEWHERE with the test that shows its effect and why it cannot show here.
A run file that is written to the same text for two keys (a key's run and another's baseline)
is trained once per worker.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import typing
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import tomlkit
from preflight_helpers import PROMPT, _candidates, make_fixture, schema_keys
from safetensors import safe_open

from engine.config.schema import SECTIONS
from engine.models.safetensors_header import read_header
from engine.preflight.checks import check_run_file
from engine.runner import run_training

BASE = {
    "train": {"max_train_steps": 3, "seed": 5, "output_name": "k"},
    "optimizer": {"learning_rate": 1e-3},
    "logging": {"every_n_steps": 1},
    "save": {"state_on_stop": False},
    "general": {"resolution": 64, "enable_bucket": True, "min_bucket_reso": 64, "max_bucket_reso": 128,
                "batch_size": 2},
}
# key -> (value, companion settings the key needs to act)
VALUES = {
    "model.vae": ("{model}/vae", {"cache": {"latents": "none"}, "memory": {"vae_dtype": "fp32"}}),
    "model.tokenizer_dir": ("{fixture}/tokenizer", {}),
    "model.v2": (True, {}),
    "model.v_parameterization": (True, {}),
    "model.clip_skip": (2, {}),
    "model.max_token_length": (150, {}),
    "model.use_ema_weights": (True, {}),
    "train.mode": ("hypernetwork", {}),
    "train.output_dir": ("{fixture}/other-runs", {}),
    "train.output_name": ("other", {}),
    "train.max_train_steps": (4, {}),   # the run logging.every_n_steps is compared with
    "train.max_train_epochs": (1, {}),
    "train.seed": (6, {}),
    "train.gradient_accumulation_steps": (2, {}),
    "train.stop_text_encoder_training": (1, {"train": {"train_text_encoder": True}}),
    "train.noise_offset": (0.1, {}),   # the baseline of noise_offset_random_strength and adaptive_noise_scale
    "train.noise_offset_random_strength": (True, {"train": {"noise_offset": 0.1}}),
    "train.multires_noise_discount": (0.6, {"train": {"multires_noise_iterations": 2}}),
    "train.ip_noise_gamma": (0.1, {}),   # the baseline of ip_noise_gamma_random_strength
    "train.ip_noise_gamma_random_strength": (True, {"train": {"ip_noise_gamma": 0.1}}),
    "train.huber_schedule": ("constant", {"train": {"loss_type": "huber"}}),
    "train.huber_c": (0.3, {"train": {"loss_type": "huber"}}),
    "train.huber_scale": (2.0, {"train": {"loss_type": "huber", "huber_schedule": "constant"}}),
    "train.adaptive_noise_scale": (0.5, {"train": {"noise_offset": 0.1}}),
    "train.scale_v_pred_loss_like_noise_pred": (True, {"model": {"v_parameterization": True}}),
    "train.zero_terminal_snr": (True, {"model": {"v_parameterization": True}}),
    "train.min_timestep": (500, {}),
    "train.max_timestep": (500, {}),
    "train.ema": (True, {"save": {"use_ema": True}}),
    "train.ema_decay": (0.5, {"train": {"ema": True}, "save": {"use_ema": True}}),
    "train.ema_update_every": (2, {"train": {"ema": True}, "save": {"use_ema": True}}),
    "train.resume": ("latest", {}),
    "train.weighted_captions": (True, {"subset": {"caption_prefix": "(red:1.8)"}}),
    "train.masked_loss": (True, {"subset": {"conditioning_data_dir": "{fixture}/masks"}}),
    "train.validate_every_n_steps": (1, {"general": {"validation_split": 0.5}, "train": {"validate_every_n_epochs": 3}}),
    "train.validate_every_n_epochs": (2, {"general": {"validation_split": 0.5}}),
    "train.max_validation_steps": (1, {"general": {"validation_split": 0.5, "batch_size": 1}}),
    "optimizer.learning_rate_te": (1e-2, {"train": {"train_text_encoder": True}}),
    "optimizer.args": ({"weight_decay": 0.5}, {}),
    "optimizer.max_grad_norm": (1e-4, {}),
    "optimizer.lr_scheduler": ("linear", {}),
    "optimizer.lr_warmup_steps": (2, {"optimizer": {"lr_scheduler": "constant_with_warmup"}}),
    "optimizer.lr_scheduler_num_cycles": (2, {"optimizer": {"lr_scheduler": "cosine_with_restarts"}}),
    "optimizer.lr_scheduler_power": (3.0, {"optimizer": {"lr_scheduler": "polynomial"}}),
    "optimizer.lr_scheduler_args": ({"lr_end": 1e-5}, {"optimizer": {"lr_scheduler": "polynomial"}}),
    "optimizer.lr_scheduler_type": ("torch.optim.lr_scheduler.ConstantLR", {}),   # a third of the LR, 5 steps
    "optimizer.lr_decay_steps": (2, {"optimizer": {"lr_scheduler": "warmup_stable_decay"}}),
    "optimizer.lr_scheduler_min_lr_ratio": (0.5, {"optimizer": {"lr_scheduler": "warmup_stable_decay",
                                                                "lr_decay_steps": 2}}),
    "optimizer.lr_scheduler_timescale": (3, {"optimizer": {"lr_scheduler": "inverse_sqrt", "lr_warmup_steps": 1}}),
    "memory.full_bf16": (True, {"memory": {"mixed_precision": "bf16"}}),
    "memory.stochastic_rounding": (False, {"memory": {"mixed_precision": "bf16", "full_bf16": True}}),
    "memory.vae_dtype": ("bf16", {}),
    "cache.cache_dir": ("{fixture}/latents", {}),
    "cache.latent_sampling": ("mean", {}),
    "data.caption_tags_join": (" with ", {}),   # CLIP drops spaces: "," and ", " tokenize alike
    "data.use_train_resolution": (False, {"subset": {"metadata_file": "meta_rel.json", "image_dir": "images"}}),
    "save.every_n_steps": (1, {}),
    "save.every_n_epochs": (1, {"train": {"max_train_steps": 8}}),   # the baseline of save.last_n_epochs
    "save.n_epoch_ratio": (8, {"train": {"max_train_steps": 8}}),   # floor(epochs / 8) = 1: every epoch
    "save.last_n_steps": (1, {"save": {"every_n_steps": 1}}),
    "save.last_n_epochs": (1, {"save": {"every_n_epochs": 1}, "train": {"max_train_steps": 8}}),
    "save.state": (True, {"save": {"every_n_steps": 1}}),
    "save.last_n_states": (1, {"save": {"every_n_steps": 1, "state": True}}),
    "save.use_ema": (True, {"train": {"ema": True}}),
    "sample.every_n_steps": (1, {"sample": {"prompts": [PROMPT]}}),
    "sample.every_n_epochs": (1, {"sample": {"prompts": [PROMPT]}}),
    "sample.at_first": (True, {"sample": {"prompts": [PROMPT]}}),
    "sample.prompts": ([PROMPT], {"sample": {"at_first": True}}),
    # not euler: with the same timesteps Euler's ODE step is DDIM's (the default) to float rounding
    "sample.sampler": ("dpmsolver++", {"sample": {"prompts": ["a red square --w 64 --h 64 --s 3 --d 3"],
                                            "at_first": True}}),
    "sample.steps": (2, {"sample": {"prompts": ["a red square --w 64 --h 64 --d 3"], "at_first": True}}),
    "sample.use_ema": (False, {"sample": {"prompts": [PROMPT], "every_n_steps": 2},
                               "train": {"ema": True, "ema_decay": 0.5}, "save": {"use_ema": True}}),
    "logging.every_n_steps": (3, {"train": {"max_train_steps": 4}}),   # steps 1 and the last are always logged
    "hypernetwork.learning_rate": (1e-2, {"train": {"mode": "hypernetwork"}}),
    "hypernetwork.save_format": ("safetensors", {"train": {"mode": "hypernetwork"}}),
}
# Keys whose effect cannot show in a short CPU run of the tiny diffusers model, with the test
# that shows it. Everything else must change the run or be refused.
ONLY_ELSEWHERE = {
    "model.pretrained_model_name_or_path": "the model itself: every training test",
    "model.allow_unsafe_pickle": "a .ckpt needing full unpickling: tests/test_models_errors.py",
    "memory.device": 'cuda is refused without a GPU (tests/test_preflight.py::test_cuda_only_choices...)',
    "memory.allow_tf32": "TF32 matmuls exist only on CUDA (Ampere+)",
    "memory.cudnn_benchmark": "cuDNN autotuning exists only on CUDA; the flag it sets is checked in "
                              "tests/test_speed_options.py::test_backend_flags_switch_tf32_and_cudnn_autotuning_on_cuda_only",
    "memory.channels_last": "a memory layout: the same numbers up to rounding; the NHWC weights are checked in "
                            "tests/test_speed_options.py::test_channels_last_stores_the_unets_convolutions_nhwc",
    "memory.torch_compile": "compiled kernels: the same numbers; inductor builds C++ for minutes on a CPU, so "
                            "tests/test_speed_options.py traces the U-Net with the eager backend",
    "memory.dynamo_backend": "needs memory.torch_compile (refused without it: tests/test_speed_options.py)",
    "memory.attention": "xformers/sdpa/math: kernels, same numbers up to rounding; xformers warns on a CPU "
                        "(tests/test_preflight.py::test_cuda_only_choices_on_a_cpu_say_what_happens_instead)",
    "memory.gradient_checkpointing": "recomputes activations: same numbers, less memory (tests/test_train_engine.py)",
    "memory.sharding": "several processes only: splits weights, gradients and states across them, the same "
                       "numbers (tests/test_many_processes.py::test_sharded_training_on_two_processes_is_the_one_process_run)",
    "train.ddp_timeout": "several processes only: how long one waits for the others "
                         "(tests/test_multi_gpu_parts.py::test_ddp_settings_reach_the_accelerator)",
    "train.ddp_gradient_as_bucket_view": "several processes only: where DDP keeps the gradients, memory alone "
                                         "(tests/test_multi_gpu_parts.py::test_ddp_settings_reach_the_accelerator)",
    "train.ddp_static_graph": "several processes only: DDP's bookkeeping, the same numbers "
                              "(tests/test_multi_gpu_parts.py::test_ddp_settings_reach_the_accelerator)",
    "memory.fused_backward_pass": "steps each weight inside backward: the same numbers, bit for bit, with its "
                                  "gradients freed early (tests/test_fused_backward.py)",
    "memory.mixed_precision": "fp16 becomes bf16 on a CPU, with a warning (tests/test_preflight.py)",
    "train.ema_cpu_offload": "where the EMA copy lives: memory only",
    "cache.vae_batch_size": "images per VAE call while caching: speed only (tests/test_data_pipeline.py)",
    "data.num_workers": "loader threads: speed only (tests/test_train_engine.py::test_background_batch_loading...)",
    "data.caption_extension": "read by sdft caption/tag on a run file (tests/test_labeling_cli.py)",
    "data.tags_extension": "read by sdft caption/tag on a run file (tests/test_labeling_cli.py)",
    "data.recursive": "read by sdft caption/tag/prepare on a run file (tests/test_data_cli.py)",
    "data.exif_transpose": "EXIF-rotated images only (tests/test_data_files.py)",
    "logging.logging_dir": "TensorBoard/W&B folders: tests/test_trackers.py",
    "logging.log_with": "TensorBoard/W&B: tests/test_trackers.py",
    "logging.log_prefix": "tracker folder names: tests/test_trackers.py",
    "logging.log_tracker_name": "tracker project: tests/test_trackers.py",
    "logging.wandb_run_name": "W&B run name: tests/test_trackers.py",
    "hypernetwork.weights": "continues a saved hypernetwork: tests/test_hypernetwork_train.py",
    "cache.verify": "trusting or checking cached files shows on the second run: "
                    "tests/test_cache_checksum.py::test_verify_exists_trusts_the_files_and_full_checks_them",
    "save.state_on_stop": "acts when a run is stopped: "
                          "tests/test_train_engine.py::test_state_on_stop_false_stops_without_writing_a_state",
}


def _merge(a: dict, b: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in a.items()}
    for section, values in b.items():
        if section == "subset":
            continue   # the dataset subset's own keys: see _document
        out.setdefault(section, {})
        out[section] = {**out[section], **values}
    return out


def _set(doc: dict, key: str, value) -> None:
    parts = key.split(".")
    table = doc
    for part in parts[:-1]:
        table = table.setdefault(part, {})
    table[parts[-1]] = value


def _fingerprint(root: Path) -> dict:
    """What a run left behind, with the folder's own name taken out."""
    run = root / "runs" / "k" if (root / "runs" / "k").exists() else root
    events = [json.loads(line) for line in (next(root.rglob("events.jsonl"))).read_text().splitlines()]
    figures = [(e.get("loss"), e.get("lr"), e.get("grad_norm")) for e in events if e["event"] == "step"]
    figures += [(e["step"], e["figures"]) for e in events if e["event"] == "validation"]
    messages = sorted(e["text"].replace(str(root), "<root>") for e in events if e["event"] == "message")
    files = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if not path.is_file() or path.name in ("config.toml", "events.jsonl", "sdft.log", "run.toml") \
                or path.suffix == ".lock":
            continue
        if ".latent-cache" in name or path.suffix == ".json" and "state" in name:
            files[name] = ""           # the cache and state bookkeeping hold times: names only
        elif path.suffix == ".safetensors":
            files[name] = _tensor_hash(path)   # the weights and the metadata that describes them
        else:
            files[name] = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
    return {"figures": figures, "messages": messages, "files": files, "run": str(run.relative_to(root))}


VOLATILE_METADATA = {"modelspec.date", "sdft.started", "sdft.finished"}


def _as_float32_bytes(dtype: str, stored: memoryview) -> bytes | memoryview | None:
    """A stored tensor's values as float32 bytes, from the bytes as read (safetensors is
    little-endian and row-major): F32 as is; F16 widened by numpy and BF16 by shifting its 16 bits
    into a float32's high half, both exact, as torch's ``.float()`` is. None: another dtype."""
    if dtype == "F32":
        return stored
    if dtype == "F16":
        return np.frombuffer(stored, dtype="<f2").astype("<f4").tobytes()
    if dtype == "BF16":
        return (np.frombuffer(stored, dtype="<u2").astype("<u4") << 16).tobytes()
    return None


def _tensor_hash(path: Path) -> str:
    """The weights file's metadata and tensors: each tensor's name and its values as float32
    bytes, converted from the file's bytes without building a tensor per weight (a tensor per
    weight of the saved fp16 model cost as much as a training step)."""
    header = read_header(path)
    data = memoryview(path.read_bytes())[header.data_start:]
    digest = hashlib.sha256()
    for key in sorted(header.metadata):
        # the run TOML (differs in the key itself) and times are left out
        if key not in VOLATILE_METADATA and not key.startswith("sdft.config"):
            digest.update(f"{key}={header.metadata[key]}".encode())
    with safe_open(str(path), framework="pt") as f:
        for key in sorted(header.tensors):
            info = header.tensors[key]
            digest.update(key.encode())
            values = _as_float32_bytes(info.dtype, data[info.offsets[0]:info.offsets[1]]) \
                if info.offsets is not None else None
            digest.update(values if values is not None else f.get_tensor(key).float().numpy().tobytes())
    return digest.hexdigest()[:12]


def _train(root: Path, doc: dict, model: Path, fixture: Path) -> tuple[dict | None, list]:
    """Train ``doc`` in ``root``, a fresh copy of the worker's ``fixture`` folder (see
    :func:`fixture_folder`); (fingerprint, []) or (None, --check's errors)."""
    shutil.copytree(fixture, root)
    meta = root / "meta.json"   # its keys are absolute image paths: this folder's, as make_fixture writes
    meta.write_text(meta.read_text().replace(str(fixture), str(root)))
    text = tomlkit.dumps(doc).replace("{fixture}", str(root)).replace("{model}", str(model))
    path = root / "run.toml"
    path.write_text(text)
    _config, problems = check_run_file(path)
    errors = [p for p in problems if p.severity == "error"]
    if errors:
        return None, errors
    result = run_training(path)
    assert result.status == "completed", result.message
    return _fingerprint(root), []


def _swap_tokens(tokenizer_json: Path, a: str, b: str) -> None:
    """A copy of the model's tokenizer that gives two words each other's ids."""
    data = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    vocab[a], vocab[b] = vocab[b], vocab[a]
    tokenizer_json.write_text(json.dumps(data), encoding="utf-8")


@pytest.fixture(scope="module")
def fixture_folder(tmp_path_factory, tiny_sd1) -> Path:
    """The images, metadata, prompts and swapped tokenizer (for model.tokenizer_dir) every run
    starts from, made once per worker: each run trains in a copy (re-parsing CLIP's 3.6 MB
    tokenizer.json per run cost more than a step)."""
    folder = make_fixture(tmp_path_factory.mktemp("key-walk-fixture"), tiny_sd1)
    shutil.copytree(tiny_sd1 / "tokenizer", folder / "tokenizer")
    _swap_tokens(folder / "tokenizer" / "tokenizer.json", "red</w>", "blue</w>")
    return folder


def _document(model: Path, extra: dict) -> dict:
    doc = _merge(BASE, extra)
    doc.setdefault("model", {})["pretrained_model_name_or_path"] = "{model}"
    doc["train"]["output_dir"] = doc["train"].get("output_dir", "{fixture}/runs")
    doc["datasets"] = [{"subsets": [{"metadata_file": "meta.json", **extra.get("subset", {})}]}]
    return doc


def _other_value(key: str):
    section, _, name = key.partition(".")
    cls = SECTIONS[section]
    if "." in name:
        sub, name = name.split(".")
        cls = typing.get_type_hints(cls)[sub]
    f = next(f for f in fields(cls) if f.name == name)
    valid, _near = _candidates(section, name, f, typing.get_type_hints(cls)[name])
    default = f.default if f.default_factory is not typing.Any and f.default is not None else None
    return next((v for v in valid if v != default and v is not None), "some text")


def test_every_schema_key_is_walked():
    listed = set(VALUES) | set(ONLY_ELSEWHERE)
    generic = [k for k in schema_keys() if k not in listed]
    assert set(listed) <= set(schema_keys()), sorted(set(listed) - set(schema_keys()))
    # Keys without an entry are walked with a value from the schema (see test below).
    assert generic, "the generic walk covers the rest"


def _in_order(value):
    """``value`` with each table's plain values first, then its tables, each group by name, so
    documents with the same content are written as the same run file text."""
    def is_table(v) -> bool:
        return isinstance(v, dict) or (isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v))

    if isinstance(value, dict):
        return {k: _in_order(value[k]) for k in sorted(value, key=lambda k: (is_table(value[k]), k))}
    if isinstance(value, list):
        return [_in_order(v) for v in value]
    return value


def _run_file_text(doc: dict) -> str:
    """The run file as written, before the worker's folders are filled in."""
    return tomlkit.dumps(_in_order(doc))


_RUNS: dict[str, tuple[dict | None, list]] = {}


def _run(doc: dict, root: Path, model: Path, fixture: Path) -> tuple[dict | None, list]:
    """:func:`_train` once per distinct run file per worker (each run takes about a second): a
    key's run whose file is another key's run or baseline, to the byte (train.ema with its
    save.use_ema is save.use_ema with its train.ema, and the baseline of train.ema_decay), is
    that run. Every run is trained in the same folder, so paths inside files are equal."""
    doc = _in_order(doc)
    text = _run_file_text(doc)
    if text not in _RUNS:
        try:
            _RUNS[text] = _train(root, doc, model, fixture)
        finally:
            shutil.rmtree(root, ignore_errors=True)
    return _RUNS[text]


def _baseline(extra: dict, root: Path, model: Path, fixture: Path) -> dict:
    """The run with only the companion settings, shared by the keys with the same ``extra``
    (see :func:`_run`). Where the companions alone are refused as idle (save.use_ema without
    train.ema: each needs the other), the baseline is the plain run."""
    fingerprint, errors = _run(_document(model, extra), root, model, fixture)
    if errors:
        assert all("has no effect without" in e.message for e in errors), errors
        return _baseline({}, root, model, fixture)
    return fingerprint


def _value_and_companions(key: str) -> tuple[object, dict]:
    """The value a key is walked with, and the companion settings it needs (VALUES, else a
    value from the schema)."""
    value, extra = VALUES.get(key, (None, {}))
    if key not in VALUES:
        value = _other_value(key)
    return value, extra


def _walked_keys() -> list:
    """The keys to walk; keys that share a run file (see :func:`_run`) are one xdist group, so
    that run is trained once under ``-n 2`` as well. The plain run, which most keys are compared
    with, joins no group (each worker trains it once)."""
    keys = [k for k in schema_keys() if k not in ONLY_ELSEWHERE]
    plain = _run_file_text(_document(Path(), {}))
    group_of: dict[str, str] = {}     # run file text or key -> the key that stands for its group

    def find(x: str) -> str:
        while group_of.get(x, x) != x:
            x = group_of[x]
        return x

    for key in keys:
        value, extra = _value_and_companions(key)
        doc = _document(Path(), extra)
        files = [_run_file_text(doc)]
        _set(doc, key, value)
        files.append(_run_file_text(doc))
        for text in files:
            if text != plain:
                group_of[find(text)] = find(key)
    members: dict[str, list[str]] = {}
    for key in keys:
        members.setdefault(find(key), []).append(key)
    return [pytest.param(k, marks=pytest.mark.xdist_group(f"key-walk-{find(k)}")) if len(members[find(k)]) > 1
            else k for k in keys]


@pytest.mark.slow
@pytest.mark.parametrize("key", _walked_keys())
def test_setting_a_key_changes_the_run_or_is_refused(key, tmp_path_factory, tiny_sd1, fixture_folder):
    value, extra = _value_and_companions(key)
    root = tmp_path_factory.getbasetemp() / "key-walk"   # one path for every run of this worker
    baseline = _baseline(extra, root, tiny_sd1, fixture_folder)
    doc = _document(tiny_sd1, extra)
    _set(doc, key, value)
    changed, errors = _run(doc, root, tiny_sd1, fixture_folder)
    if errors:
        assert all(e.hint or "not" in e.message for e in errors), "a refusal gives a reason"
        return
    assert changed != baseline, f"{key} = {value!r} was accepted and changed nothing the run left behind"
