"""`sdft bench --gpu-report OUT_DIR`: the speed and memory matrix of a full-size SD 1.5 model on the
GPU at hand, in one command that fits a short slice of GPU time.

The model is built in memory with SD 1.5's architecture (engine/models/configs/sd1) and random
weights, so nothing is downloaded; a few generated 512x512 images are cached as latents once. Then
every combination of batch 1/4/8, fp16/bf16, SDPA/xformers, AdamW/AdamW8bit and gradient
checkpointing on/off is trained by the real Trainer for a few warm-up and timed steps
(engine.bench.speed_matrix), nearest the first combination first, until the time budget (390 s
from the command's start by default, so the whole command fits a 7-minute slice) would run out; the rest are listed as not run. ``OUT_DIR`` gets gpu-report.md and
gpu-report.json, rewritten after every cell so a slice that ends early still leaves its figures.

The same code path runs on a CPU with the tiny model at small sizes (``ReportSize(model="tiny")``),
which is how the tests exercise it before it meets a GPU.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path

from engine.bench.speed_cells import BATCH_KEY

REPORT_TOML = """\
# sdft bench --gpu-report: a random-weight {label} model built in memory (this path is not read).
config_version = 1

[model]
pretrained_model_name_or_path = "random-{model}"

[train]
output_dir = "runs"
output_name = "gpu-report"
seed = 0

[optimizer]
type = "AdamW"
learning_rate = 1e-6

[memory]
mixed_precision = "fp16"

[cache]
latents = "disk"
vae_batch_size = 4

[general]
resolution = {resolution}
batch_size = 1

[[datasets]]
  [[datasets.subsets]]
  image_dir = "images"
  metadata_file = "metadata.json"
"""

MODEL_LABELS = {"sd1": "SD 1.5-architecture", "tiny": "tiny SD1 (test)"}


@dataclass(frozen=True)
class ReportSize:
    """What the report trains: the model ("sd1": full size; "tiny": the test model), the image side
    and the batch sizes (the generated dataset holds as many images as the largest)."""

    model: str = "sd1"
    resolution: int = 512
    batch_sizes: tuple[int, ...] = (1, 4, 8)


def report_axes(size: ReportSize) -> tuple:
    return (
        ("memory.mixed_precision", ("fp16", "bf16")),
        (BATCH_KEY, tuple(size.batch_sizes)),
        ("memory.attention", ("sdpa", "xformers")),
        ("optimizer.type", ("AdamW", "AdamW8bit")),
        ("memory.gradient_checkpointing", (False, True)),
    )


def _public(config: dict) -> dict:
    return {k: v for k, v in config.items() if not k.startswith("_") and k not in ("architectures", "model_type")}


def random_model(kind: str, seed: int = 0):
    """A LoadedModel with random weights, fp32 on the CPU: SD 1.5's architecture, or the tiny one."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.models.configs import builtin_config
    from engine.models.load import LoadedModel, training_scheduler
    from engine.models.tiny import TinySpec, tiny_text_config, tiny_unet_config, tiny_vae_config
    from engine.models.tokenizer import build_clip_tokenizer

    if kind == "tiny":
        spec = TinySpec("sd1", seed=seed)
        unet_cfg, vae_cfg, text_cfg = tiny_unet_config(spec), tiny_vae_config(spec), tiny_text_config(spec)
    elif kind == "sd1":
        unet_cfg, vae_cfg, text_cfg = (_public(builtin_config("sd1", part)) for part in ("unet", "vae", "text_encoder"))
    else:
        raise ValueError(f"unknown report model {kind!r}: use sd1 or tiny")
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**_public(unet_cfg))
    vae = AutoencoderKL(**_public(vae_cfg)).eval()
    text_encoder = CLIPTextModel(CLIPTextConfig(**text_cfg)).eval()
    return LoadedModel(unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=build_clip_tokenizer(v2=False),
                       noise_scheduler=training_scheduler(False, False), v2=False, v_parameterization=False,
                       report=[], source=f"random-{kind}", base_name=f"random-{kind}", base_sha256=None)


def write_report_run(folder: Path, size: ReportSize, images_count: int) -> Path:
    """``images_count`` generated square images, their metadata and the run TOML."""
    from PIL import Image, ImageDraw

    from engine import atomic
    from engine.data.metadata import build_metadata, write_metadata_json

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    side = size.resolution
    for i in range(images_count):
        path = images / f"image_{i:02d}.png"
        if not path.exists():
            image = Image.new("RGB", (side, side), ((37 * i) % 256, (91 * i) % 256, (53 * i + 120) % 256))
            ImageDraw.Draw(image).ellipse((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=(230, 200, 40))
            image.save(path)
            atomic.write_text(path.with_suffix(".caption"), f"a yellow circle on a coloured background, image {i}\n")
    write_metadata_json(folder / "metadata.json", build_metadata(images))
    toml_path = folder / "gpu-report.toml"
    atomic.write_text(toml_path, REPORT_TOML.format(label=MODEL_LABELS[size.model], model=size.model,
                                                    resolution=side))
    return toml_path


def _versions() -> dict:
    import importlib.metadata as md

    import torch

    found = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda}
    for name in ("diffusers", "accelerate", "xformers", "bitsandbytes"):
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def gpu_report(out_dir: str | Path, *, size: ReportSize = ReportSize(), steps: int = 5, warmup: int = 3,
               budget_s: float | None = 390.0, axes=None, progress=None, started: float | None = None) -> dict:
    """Build the model, run the matrix within ``budget_s`` (counted from ``started``: the command's
    start, default this call's), write OUT_DIR/gpu-report.md and .json; returns the report."""
    from engine.bench.speed_matrix import MatrixPlan, ModelStore, run_matrix

    started = time.perf_counter() if started is None else started
    say = progress or (lambda _text: None)
    out = Path(out_dir)
    axes = axes or report_axes(size)
    batches = [int(v) for key, values in axes if key == BATCH_KEY for v in values]
    # Four batches per epoch at the largest batch size, so the loader prefetches as in a real run.
    run_file = write_report_run(out / "work", size, 4 * max(batches, default=1))
    say(f"sdft bench --gpu-report: building a random-weight {MODEL_LABELS[size.model]} model (no download)...")
    model = random_model(size.model)
    unet_params = sum(p.numel() for p in model.unet.parameters())
    say(f"sdft bench --gpu-report: built in {time.perf_counter() - started:.1f} s (U-Net {unet_params / 1e6:.1f} M "
        f"parameters); {size.resolution}x{size.resolution}, budget {budget_s if budget_s is not None else 'none'} s")
    header = {"report": "sdft bench --gpu-report", "model": MODEL_LABELS[size.model], "unet_parameters": unet_params,
              "resolution": size.resolution, "versions": _versions()}
    plan = MatrixPlan(run_file, axes=axes, every_combination=True, steps=steps,
                      warmup=warmup, budget_s=budget_s)
    report = run_matrix(plan, progress=say, store=ModelStore(model), started=started,
                        on_cell=lambda partial: write_outputs(out, {**header, **partial}))
    report = {**header, **report}
    md_path, json_path = write_outputs(out, report)
    say(f"sdft bench --gpu-report: wrote {md_path} and {json_path}")
    return report


def write_outputs(out: Path, report: dict) -> tuple[Path, Path]:
    from engine import atomic
    from engine.bench.speed_report import write_json

    md_path = out / "gpu-report.md"
    atomic.write_text(md_path, report_markdown(report))
    return md_path, write_json(report, out / "gpu-report.json")


def report_markdown(report: dict) -> str:
    from engine.bench.speed_report import footnote, markdown_table

    cells = report["cells"]
    counts = {status: sum(c["status"] == status for c in cells) for status in ("ran", "skipped", "failed", "not run")}
    flops = sorted({(c["changes"].get(BATCH_KEY), c["flops_per_sample"]) for c in cells
                    if c.get("flops_per_sample")}, key=lambda pair: pair[0] or 0)
    v = report["versions"]
    lines = [
        "# sdft GPU report", "",
        f"- device: {report['device']}; torch {v['torch']} (CUDA {v['cuda']}), diffusers {v['diffusers']}, "
        f"xformers {v['xformers'] or 'not installed'}, bitsandbytes {v['bitsandbytes'] or 'not installed'}",
        f"- model: random-weight {report['model']} (U-Net {report['unet_parameters'] / 1e6:.1f} M parameters), "
        f"{report['resolution']}x{report['resolution']} images, cached latents",
        f"- each cell: the Trainer's real loop, {report['warmup']} warm-up + {report['steps']} timed steps; budget "
        f"{report['budget_s']} s; cells: {counts['ran']} ran, {counts['skipped']} skipped, {counts['failed']} failed, "
        f"{counts['not run']} not run",
        "- FLOPs per sample (torch.utils.flop_counter over one training step, no checkpointing): "
        + (", ".join(f"batch {b}: {_flop(f)}" for b, f in flops) or "none counted")
        + (" (on a CPU the counter does not see SDPA's attention products)" if report["device"] == "cpu" else ""),
        "- command: `sdft bench --gpu-report OUT_DIR`", "",
        "## Timed", "", markdown_table(report) or "No cell ran.", "", footnote(report, bullet="- "), "",
    ]
    others = markdown_table(report, timed=False)
    if others:
        lines += ["## Not timed", "", others, ""]
    return "\n".join(lines)


def _flop(value: float) -> str:
    return f"{value / 1e12:.3f} TFLOP" if value >= 1e11 else f"{value / 1e9:.3f} GFLOP"
