"""``sdft convert IN OUT``: any supported model format to any other, offline, through the
model's family adapter (it loads and saves; docs/architecture.md, "Model families").

Exit codes: 0 done, 2 bad input (a ModelLoadError: the message says what to do), 1 other errors.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.commandline import run_command

TO_CHOICES = ("safetensors", "ckpt", "diffusers")
PRECISION_CHOICES = ("fp16", "bf16", "fp32")
_SAVE_PRECISION = {"fp16": "fp16", "bf16": "bf16", "fp32": "float", "float32": "fp32", "float16": "fp16",
                   "bfloat16": "bf16"}
# Metadata we recompute on every save; everything else in the source's metadata is kept.
_RECOMPUTED = ("modelspec.architecture", "modelspec.prediction_type", "modelspec.implementation_version",
               "modelspec.date", "sdft.version", "sdft.v2", "sdft.v_parameterization", "sdft.unet_config",
               "sdft.vae_config", "sdft.text_config", "sdft.scheduler_config", "sdft.text_config_2",
               "sdft.zero_terminal_snr")


def register(commands) -> None:
    """Add ``convert`` to the ``sdft`` tree (see engine.commandline)."""
    p = commands.add_parser(
        "convert", help="convert a model between .safetensors, .ckpt and diffusers",
        description="Convert a Stable Diffusion 1.x/2.x or SDXL model between a single .safetensors/.ckpt file "
                    "(original SD layout, kohya's for SDXL: for AUTOMATIC1111/ComfyUI) and a diffusers folder. "
                    "No network unless IN is a hub id.",
    )
    p.add_argument("input", help="a .safetensors/.ckpt file, a diffusers folder, or a hub id (online)")
    p.add_argument("output", help="the file or folder to write (an existing one only with --force)")
    p.add_argument("--force", action="store_true", help="replace OUT when it exists (atomically)")
    p.add_argument("--to", choices=TO_CHOICES, default=None,
                   help="output format (default: from OUT's extension; a name without one is a diffusers folder)")
    p.add_argument("--precision", choices=PRECISION_CHOICES, default=None,
                   help="weights precision (default: the input's own precision)")
    p.add_argument("--v2", action=argparse.BooleanOptionalAction, default=None,
                   help="the model is SD 2.x (--no-v2: SD 1.x); default: detected")
    p.add_argument("--v-parameterization", action=argparse.BooleanOptionalAction, default=None,
                   help="the model predicts v (--no-v-parameterization: epsilon); default: detected")
    p.add_argument("--vae", default=None, help="replace the VAE with this file or folder")
    p.add_argument("--use-ema", action="store_true", help="write the EMA U-Net when the input has one")
    p.add_argument("--allow-unsafe-pickle", action="store_true",
                   help="load a .ckpt whose pickle needs more than tensors (can run code: only for files you trust)")
    p.set_defaults(run=_convert)


def output_format(out: Path, to: str | None) -> str:
    if to == "diffusers":
        return "diffusers_safetensors"
    if to is not None:
        return to
    suffix = out.suffix.lower()
    if suffix == ".ckpt":
        return "ckpt"
    if suffix == ".safetensors":
        return "safetensors"
    return "diffusers_safetensors"


def convert_command(argv: list[str] | None = None) -> int:
    """Run ``sdft convert``; returns the process exit code."""
    return run_command(register, "convert", argv)


def _convert(args) -> int:
    from engine.models.errors import ModelLoadError

    out = Path(args.output)
    fmt = output_format(out, args.to)
    try:
        from engine.families import family_of
        from engine.families.sources import load_any

        if Path(args.input).resolve() == out.resolve():
            raise ModelLoadError(f"{out}: the output is the input; choose another output path")
        if out.exists() and not args.force:   # checked before the model loads: nothing is lost or waited for
            raise ModelLoadError(f"{out} exists; pass --force to replace it, or choose another output path")
        loaded = load_any(   # converting is not training: a family runs may not train yet converts
            args.input,
            v2="auto" if args.v2 is None else args.v2,
            v_parameterization="auto" if args.v_parameterization is None else args.v_parameterization,
            vae=args.vae, allow_unsafe_pickle=args.allow_unsafe_pickle, use_ema=args.use_ema,
            hash_file=False,
        )
        for line in loaded.report:
            print(f"  {line}")
        precision = _SAVE_PRECISION[args.precision or loaded.source_dtype or "float32"]
        keep = {k: v for k, v in loaded.metadata.items()
                if k.startswith(("modelspec.", "sdft.")) and k not in _RECOMPUTED}
        family = family_of(loaded)
        written = family.save(out, loaded, v_prediction=loaded.v_parameterization, fmt=fmt, precision=precision,
                              metadata=keep)
    except ModelLoadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # report, don't dump a traceback on the user
        print(f"error: conversion failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    kind = "diffusers folder" if fmt.startswith("diffusers") else fmt
    print(f"wrote {written} ({kind}, {'fp32' if precision == 'float' else precision}, "
          f"{family.label}, {'v' if loaded.v_parameterization else 'epsilon'} prediction)")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(convert_command())
