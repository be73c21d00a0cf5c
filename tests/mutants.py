"""On-demand mutation check: break one behaviour users rely on at a time and show a test catches it.

    OMP_NUM_THREADS=1 python tests/mutants.py             # every mutant (about 10 minutes on 2 cores)
    OMP_NUM_THREADS=1 python tests/mutants.py rng-restore # one, by name
    python tests/mutants.py --list

Each mutant is a one-line change (the exact text it replaces must occur once, else the mutant is
stale and reported so), applied to the working tree, checked by the tests named beside it, and
undone (also on Ctrl-C). A mutant the tests do not fail is a SURVIVOR: the behaviour has no test
that would notice it breaking. docs/testing.md says when to run this and what to do with a
survivor. Not part of the test suite: pytest collects test_*.py only.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    behaviour: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]


MUTANTS = (
    Mutant("rng-restore", "resume restores the global generators", "engine/train/saves/state.py",
           '    torch.set_rng_state(tensors["torch"])\n', "    pass\n",
           ("tests/test_resume_global_rng.py",)),
    Mutant("cache-key-vae", "a latent made by another VAE is not reused", "engine/data/cache_keys.py",
           '        "vae": vae_id,\n', "", ("tests/test_cache_key_fields.py",)),
    Mutant("cache-key-crop", "a latent of another crop is not reused", "engine/data/cache_keys.py",
           '        "crop": list(job.offset),\n', "", ("tests/test_cache_key_fields.py",)),
    Mutant("cache-key-flip", "a latent without its flipped twin is not reused", "engine/data/cache_keys.py",
           '        "flip": bool(job.flip),\n', "", ("tests/test_cache_key_fields.py",)),
    Mutant("cache-key-interpolation", "a latent resized another way is not reused", "engine/data/cache_keys.py",
           '        "interpolation": job.interpolation,\n', "", ("tests/test_cache_key_fields.py",)),
    Mutant("cache-key-resolution", "a latent of another bucket is not reused", "engine/data/cache_keys.py",
           '        "bucket": list(job.bucket),\n        "resized": list(job.resized),\n', "",
           ("tests/test_cache_key_fields.py",)),
    Mutant("cache-key-dtype", "a latent encoded in another dtype is not reused", "engine/data/cache_keys.py",
           '        "dtype": encode_dtype,\n', "", ("tests/test_cache_key_fields.py",)),
    Mutant("atomic-write", "a partial file is never visible at the target", "engine/atomic.py",
           "        yield tmp\n        os.chmod(tmp, mode)\n        os.replace(tmp, target)\n",
           "        yield target\n        tmp.unlink(missing_ok=True)\n", ("tests/test_atomic_visibility.py",)),
    Mutant("bucket-nearest-aspect", "an image goes to the bucket nearest its aspect ratio", "engine/data/buckets.py",
           "        best = np.argmin(np.abs(", "        best = np.argmax(np.abs(",
           ("tests/test_data_buckets.py",)),
    Mutant("keep-tokens", "shuffled captions keep their first keep_tokens tags in place",
           "engine/data/processing.py", "    return pieces[:k], pieces[k:], []\n", "    return [], pieces, []\n",
           ("tests/test_data_processing.py",)),
    Mutant("clip-skip", "clip_skip takes the text encoder's penultimate layer", "engine/models/text_encoding.py",
           "(hidden[-self.clip_skip])", "(hidden[-1])", ("tests/test_text_encoding.py",)),
    Mutant("v-target", "v-prediction models learn the v target", "engine/train/objective.py",
           "    return a.sqrt() * noise - (1 - a).sqrt() * x0\n", "    return noise\n",
           ("tests/test_train_objective.py", "tests/test_objective_vs_diffusers.py")),
    Mutant("guidance-embeddings", "samples are guided toward their prompt, away from the negative",
           "engine/families/base.py", 'return {"prompt_embeds": positive, "negative_prompt_embeds": negative}',
           'return {"prompt_embeds": negative, "negative_prompt_embeds": positive}',
           ("tests/test_learning_bench.py::test_a_model_trained_by_sdft_learns_its_captions",)),
    Mutant("min-snr", "min-SNR weighting caps the easy timesteps", "engine/train/objective.py",
           "            w = w * torch.clamp(gamma / s, max=1.0)", "            w = w",
           ("tests/test_train_objective.py",)),
    Mutant("resume-position", "resume continues at the same batch of the epoch", "engine/train/trainer.py",
           "self.batches_done, self.loss_avg = counters.batches_done, counters.loss_avg",
           "self.loss_avg = counters.loss_avg", ("tests/test_train_engine.py::test_stop_writes_state_and_resume_is_exact",)),
    Mutant("ema-warm-up", "the EMA's decay warms up", "engine/train/ema.py",
           "    return min(1 - (1 + earlier / inv_gamma) ** -power, cap)\n", "    return cap\n",
           ("tests/test_train_ema.py",)),
    Mutant("stochastic-rounding", "bf16 weights keep updates below a bf16 step", "engine/train/weight_update.py",
           "    target.copy_(noise.add_(bits).bitwise_and_(-65536).view(torch.float32))\n",
           "    target.copy_(source)\n", ("tests/test_bf16_weights.py",)),
    Mutant("fused-step", "the fused backward pass steps every weight", "engine/train/weight_update.py",
           "            with stepping_only(inner, [p]):\n                inner.step()\n",
           "            pass\n", ("tests/test_fused_backward.py::test_gradients_never_all_exist_at_once",)),
    Mutant("lr-skip", "the schedule does not advance on a step fp16's scaler skipped", "engine/train/weight_update.py",
           "            skipped = self._scale() < scale_before\n", "            skipped = None\n",
           ("tests/test_gpu_hot_path.py::test_a_step_the_gradient_scaler_skips_leaves_the_schedule_where_it_was",)),
    Mutant("divergence", "a run whose loss goes NaN stops", "engine/train/divergence.py",
           "        self.first_bad = torch.where(bad & (first < 0), torch.full_like(first, step), first)\n", "",
           ("tests/test_divergence.py::test_the_watch_notes_on_the_device_and_reads_only_when_checked",)),
    Mutant("inert-keys", "a key that would do nothing is refused", "engine/preflight/inert.py",
           "        if rule.works(config):\n            continue\n", "        continue\n",
           ("tests/test_preflight_inert.py",)),
)


def apply(mutant: Mutant) -> str | None:
    """Apply ``mutant``; the file's original text, or None when the mutant is stale."""
    path = ROOT / mutant.file
    text = path.read_text(encoding="utf-8")
    if text.count(mutant.old) != 1:
        return None
    path.write_text(text.replace(mutant.old, mutant.new), encoding="utf-8")
    return text


def caught(mutant: Mutant) -> tuple[str, float]:
    """("caught" | "SURVIVED" | "stale"), seconds."""
    started = time.perf_counter()
    original = apply(mutant)
    if original is None:
        return "stale", 0.0
    try:
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-n", "0", "-p", "no:cacheprovider",
                               *mutant.tests], cwd=ROOT, env=env, capture_output=True, text=True)
    finally:
        (ROOT / mutant.file).write_text(original, encoding="utf-8")
    return ("caught" if done.returncode != 0 else "SURVIVED"), time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="mutants to run (default: all)")
    parser.add_argument("--list", action="store_true", help="list the mutants and what each breaks")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.names or m.name in args.names]
    unknown = set(args.names) - {m.name for m in MUTANTS}
    if unknown:
        parser.error(f"no mutant named {', '.join(sorted(unknown))} (see --list)")
    if args.list:
        for m in chosen:
            print(f"{m.name:26} {m.behaviour}  [{m.file}]")
        return 0
    results = []
    for m in chosen:
        verdict, seconds = caught(m)
        results.append(verdict)
        print(f"{verdict:8} {m.name:26} {m.behaviour} ({seconds:.0f} s)", flush=True)
    bad = sum(v != "caught" for v in results)
    print(f"{len(results) - bad} of {len(results)} mutants caught" + (f"; {bad} not" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
