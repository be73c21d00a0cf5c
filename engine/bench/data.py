"""Data-pipeline benchmarks on synthetic data: scanning, bucketing, latent caching.

``python -m engine.bench.data`` (or ``data_bench(argv)``) prints one table:

- scan: find + header-read N images (copies of a few real-sized JPEG/PNG/WebP files);
- bucketing: assign 100,000 random sizes to kohya's 512 buckets;
- latent caching: ``LatentCache.prepare`` (hash, decode, resize, encode, write, all overlapped)
  against a bare loop of VAE encodes of the same, already decoded images on the same device.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from pathlib import Path

from engine.commandline import run_command

TEMPLATE_SIZES = [(1536, 1024, "JPEG"), (1024, 1536, "JPEG"), (1200, 900, "PNG"), (800, 1200, "WEBP"),
                  (2048, 1152, "JPEG"), (640, 640, "PNG"), (1000, 1500, "JPEG"), (3000, 2000, "JPEG")]


def _gradient(w: int, h: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    c = rng.uniform(0.2, 1.0, 3).astype(np.float32)[None, None, :]
    arr = ((x * c + y * (1 - c)) % 256).astype(np.uint8)
    return Image.fromarray(arr, "RGB")


def make_scan_folder(folder: Path, n: int) -> Path:
    """``n`` images: byte copies of real-sized templates (headers as in real photos)."""
    folder.mkdir(parents=True, exist_ok=True)
    templates = []
    for i, (w, h, fmt) in enumerate(TEMPLATE_SIZES):
        path = folder / f"template{i}.{fmt.lower()}"
        _gradient(w, h, i).save(path, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
        templates.append(path.read_bytes())
        path.unlink()
    ext = [fmt.lower() for _, _, fmt in TEMPLATE_SIZES]
    for i in range(n):
        k = i % len(templates)
        (folder / f"img{i:05d}.{ext[k]}").write_bytes(templates[k])
    return folder


def bench_scan(n: int = 10_000, workdir: Path | None = None) -> dict:
    from engine.data.scan import find_images, read_sizes

    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = make_scan_folder(Path(tmp) / "scan", n)
        t0 = time.perf_counter()
        paths = find_images(folder)
        infos = read_sizes(paths)
        seconds = time.perf_counter() - t0
    assert len(infos) == n and all(i.size for i in infos)
    return {"name": f"scan {n:,} images (headers only)", "seconds": seconds, "target": "< 10 s",
            "ok": seconds < 10, "rate": f"{n / seconds:,.0f} images/s"}


def bench_bucketing(n: int = 100_000) -> dict:
    from engine.data.buckets import BucketSettings, assign_sizes

    rng = random.Random(0)
    sizes = [(rng.randint(200, 4000), rng.randint(200, 4000)) for _ in range(n)]
    settings = BucketSettings((512, 512), True, False, 256, 1024, 64)
    t0 = time.perf_counter()
    out = assign_sizes(sizes, settings)
    seconds = time.perf_counter() - t0
    assert len(out) == n
    return {"name": f"bucket {n:,} image sizes", "seconds": seconds, "target": "< 1 s", "ok": seconds < 1,
            "rate": f"{n / seconds:,.0f} sizes/s"}


def _build_vae(kind: str):
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    if kind == "sd":
        from engine.models.configs import builtin_config

        config = {k: v for k, v in builtin_config("sd1", "vae").items() if not k.startswith("_")}
        return AutoencoderKL(**config)
    from engine.models.tiny import TinySpec, tiny_vae_config

    return AutoencoderKL(**tiny_vae_config(TinySpec()))


def bench_cache(n: int = 48, *, vae_kind: str = "tiny", device: str | None = None, batch_size: int = 4,
                resolution: int = 512, workdir: Path | None = None, repeats: int = 2) -> dict:
    """Caching throughput vs a bare encode loop over the same decoded images (ratio ≤ 1.10 is the target)."""
    import torch

    from engine.data.buckets import BucketSettings, assign_sizes, crop_offset
    from engine.data.cache import CacheJob, LatentCache, encode_pixels
    from engine.data.images import auto_interpolation, load_pixels, to_tensor

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    vae = _build_vae(vae_kind).to(device).eval()
    dtype = torch.float32
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        folder = Path(tmp) / "imgs"
        folder.mkdir()
        rng = random.Random(1)
        shapes = [(768, 512), (512, 768), (640, 640), (896, 512)]
        paths = []
        for i in range(n):
            w, h = shapes[i % len(shapes)]
            w, h = w + rng.randint(0, 40), h + rng.randint(0, 40)
            p = folder / f"img{i:04d}.jpg"
            _gradient(w, h, i).save(p, "JPEG", quality=90)
            paths.append(p)
        from engine.data.scan import read_sizes

        sizes = [i.size for i in read_sizes(paths)]
        settings = BucketSettings((resolution, resolution), True, False, 256, 1024, 64)
        assigned = assign_sizes(sizes, settings)
        jobs = [CacheJob(i, p, s, a.bucket, a.resized, crop_offset(a.resized, a.bucket),
                         auto_interpolation(s, a.resized), False)
                for i, (p, s, a) in enumerate(zip(paths, sizes, assigned, strict=True))]
        # Bare loop input: the same pixels, decoded in advance, batched by bucket like the cache does.
        ordered = sorted(jobs, key=lambda j: (j.bucket, j.item))
        batches, current = [], []
        for job in ordered:
            if current and (current[0].bucket != job.bucket or len(current) == batch_size):
                batches.append(current)
                current = []
            current.append(job)
        if current:
            batches.append(current)
        tensors = [to_tensor([load_pixels(j.path, j.resized, j.bucket, j.offset, interpolation=j.interpolation)
                              for j in b]) for b in batches]

        def sync():
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        # warm-up (kernels, allocator)
        encode_pixels(vae, tensors[0], device, dtype)
        sync()
        bare, piped = [], []
        for r in range(repeats):
            t0 = time.perf_counter()
            for x in tensors:
                mean, std = encode_pixels(vae, x, device, dtype)
                mean.cpu(), std.cpu()
            sync()
            bare.append(time.perf_counter() - t0)
            cache_dir = Path(tmp) / f"cache{r}"
            cache = LatentCache(cache_dir, mode="disk", import_kohya=False)
            t0 = time.perf_counter()
            result = cache.prepare(jobs, vae, device, dtype, vae_batch_size=batch_size, vae_id="bench",
                                   log=lambda s: None)
            sync()
            piped.append(time.perf_counter() - t0)
            assert result.encoded == n, result.failed
    b, p = min(bare), min(piped)
    ratio = p / b
    return {"name": f"cache {n} images ({vae_kind} VAE, {device}, batch {batch_size})", "seconds": p,
            "bare_seconds": b, "ratio": ratio, "target": "≤ 1.10 × bare encode loop", "ok": ratio <= 1.10,
            "rate": f"{n / p:,.1f} img/s vs {n / b:,.1f} img/s bare"}


def register(commands) -> None:
    """Add ``bench-data`` to the ``sdft`` tree, unlisted: users reach it as ``sdft bench --data``."""
    p = commands.add_parser("bench-data", description=__doc__.split("\n\n")[0])
    p.add_argument("--scan-images", type=int, default=10_000)
    p.add_argument("--bucket-sizes", type=int, default=100_000)
    p.add_argument("--cache-images", type=int, default=48)
    p.add_argument("--vae", choices=("tiny", "sd"), default="tiny", help="tiny test VAE or SD's real architecture")
    p.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--only", choices=("scan", "buckets", "cache"), action="append")
    p.add_argument("--workdir", help="folder for the synthetic files (default: system temp)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(run=_data_bench)


def data_bench(argv: list[str] | None = None) -> int:
    return run_command(register, "bench-data", argv)


def _data_bench(args) -> int:
    only = set(args.only or ("scan", "buckets", "cache"))
    workdir = Path(args.workdir) if args.workdir else None
    rows = []
    if "scan" in only:
        rows.append(bench_scan(args.scan_images, workdir))
    if "buckets" in only:
        rows.append(bench_bucketing(args.bucket_sizes))
    if "cache" in only:
        rows.append(bench_cache(args.cache_images, vae_kind=args.vae, device=args.device,
                                batch_size=args.batch_size, workdir=workdir))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if all(r["ok"] for r in rows) else 1
    from rich.console import Console
    from rich.table import Table

    table = Table(title="sdft data pipeline benchmark")
    for col in ("benchmark", "time", "throughput", "target", "ok"):
        table.add_column(col)
    for r in rows:
        time_text = f"{r['seconds']:.3f} s"
        if "ratio" in r:
            time_text += f" (bare {r['bare_seconds']:.3f} s, ×{r['ratio']:.3f})"
        table.add_row(r["name"], time_text, r["rate"], r["target"], "yes" if r["ok"] else "NO")
    Console().print(table)
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(data_bench())
