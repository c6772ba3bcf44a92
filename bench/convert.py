"""Benchmark `linedraw convert` against a plain PyTorch eager loop over the same generator weights.

Both read the same 512x768 JPEGs (short side 512, so neither resizes) and write PNG drawings. The plain loop
is what one writes by hand: per file, open -> tensor -> model -> save, batch 1, float32. The CLI path is
`linedraw convert` in-process with its batching, decoding/saving threads and, on CUDA, channels_last and
optionally float16. Each configuration runs in its own child process, after a short warm-up, so its peak
memory (RSS on CPU, allocated CUDA memory on GPU) is its own. The generator is `--checkpoint` when given,
else the shipped "contour" checkpoint, else a randomly initialised paper-size generator (ngf 64, 3 blocks;
speed does not depend on the weights).

    OMP_NUM_THREADS=1 python bench/convert.py              # CPU (and GPU when CUDA is available)
    python bench/convert.py --images 512 --json bench-convert.json
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PAPER = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 64, "n_blocks": 3}}


def make_photos(folder: Path, count: int, height: int = 512, width: int = 768) -> list[Path]:
    """`count` smooth random JPEG photos (natural-photo-like file sizes and decode cost)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        small = Image.fromarray(rng.integers(0, 256, (height // 16, width // 16, 3), dtype=np.uint8))
        path = folder / f"photo_{i:05d}.jpg"
        small.resize((width, height), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def resolve_checkpoint(requested: str | None, workdir: Path) -> tuple[str, str]:
    """(checkpoint reference, description) to benchmark."""
    from linedraw.checkpoint import CheckpointError, resolve_checkpoint as resolve

    if requested:
        return requested, requested
    try:
        resolve("contour")
        return "contour", "shipped 'contour'"
    except CheckpointError:
        import torch

        from linedraw.checkpoint import save_generator
        from linedraw.models import create_model

        torch.manual_seed(0)
        path = save_generator(create_model(PAPER["model"], **PAPER["kwargs"]), workdir / "random", PAPER)
        return str(path), "random paper-size generator (ngf 64, 3 blocks)"


# ----------------------------------------------------------------------------------------- child process


def plain_loop(checkpoint: str, files: list[Path], out: Path, device: str) -> None:
    """The hand-written baseline: one photo at a time, float32."""
    import torch
    from PIL import Image

    from linedraw.checkpoint import load_generator
    from linedraw.images import to_pil, to_tensor

    model, _ = load_generator(checkpoint, device=device)
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for path in files:
            photo = to_tensor(Image.open(path).convert("RGB"))[None].to(device)
            to_pil(model(photo)[0]).save(out / f"{path.stem}.png")


def cli_path(checkpoint: str, files: list[Path], out: Path, device: str, options: list[str]) -> None:
    from linedraw.cli import main

    code = main(["convert", *map(str, files), "-o", str(out), "--checkpoint", checkpoint, "--size", "512",
                 "--device", device, *options])
    if code != 0:
        raise SystemExit(f"linedraw convert exited with {code}")


def child(spec: dict) -> dict:
    """Run one configuration (warm-up, then timed) and report its throughput and peak memory."""
    import torch

    files = [Path(p) for p in spec["files"]]
    device = spec["device"]
    out = Path(spec["out"])

    def run(subset: list[Path], target: Path) -> None:
        if spec["path"] == "plain":
            plain_loop(spec["checkpoint"], subset, target, device)
        else:
            cli_path(spec["checkpoint"], subset, target, device, spec["options"])

    run(files[: spec["warmup"]], out / "warmup")
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    run(files, out / "timed")
    if cuda:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    result = {"images_per_s": len(files) / elapsed, "seconds": elapsed,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if cuda:
        result["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


# ----------------------------------------------------------------------------------------- driver


def configurations(device: str, batch_size: int | None, workers: int | None) -> list[tuple[str, str, list[str]]]:
    """(name, path kind, CLI options) to compare on `device`; the plain loop first. None = the CLI's default."""
    configs = [("plain eager loop (batch 1, fp32)", "plain", [])]
    cli = (["--batch-size", str(batch_size)] if batch_size is not None else []) \
        + (["--workers", str(workers)] if workers is not None else [])
    label = f"batch {batch_size or 'default'}, {'default' if workers is None else workers} workers"
    configs.append((f"linedraw convert ({label})", "cli", cli))
    if device == "cuda":
        configs.append((f"linedraw convert --half ({label})", "cli", cli + ["--half"]))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="checkpoint name or path (default: contour, else a random one)")
    parser.add_argument("--images", type=int, default=None, help="photos per run (default: 8 on CPU, 256 on GPU)")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="CLI batch size (default: the CLI's own on CPU, 16 GPU)")
    parser.add_argument("--workers", type=int, default=None, help="CLI decode/save threads (default: the CLI's own on CPU, 8 GPU)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows = []
    with tempfile.TemporaryDirectory(prefix="linedraw-bench-") as tmp:
        workdir = Path(tmp)
        checkpoint, description = resolve_checkpoint(args.checkpoint, workdir)
        print(f"generator: {description}; photos 512x768 JPEG -> PNG drawings at 512 px short side")
        for device in devices:
            gpu = device.startswith("cuda")
            count = args.images or (256 if gpu else 8)
            files = make_photos(workdir / f"photos_{count}", count)
            batch_size = args.batch_size or (16 if gpu else None)
            workers = args.workers if args.workers is not None else (8 if gpu else None)
            for name, kind, options in configurations(device, batch_size, workers):
                spec = {"path": kind, "checkpoint": checkpoint, "files": [str(f) for f in files], "device": device,
                        "out": str(workdir / f"out_{device}_{len(rows)}"), "options": options,
                        "warmup": min(len(files), (batch_size or 1) * 2 if kind == "cli" else 2)}
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
                if done.returncode != 0:
                    raise SystemExit(f"{name} on {device} failed:\n{done.stderr[-3000:]}")
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"device": device, "config": name, "images": count, **result})
                print(f"  {device:5} {name}: {result['images_per_s']:.2f} images/s", flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"generator": description, "rows": rows}, indent=2) + "\n")


def print_table(rows: list[dict]) -> None:
    """Markdown table; the ratio is images/s over the plain loop's on the same device."""
    baseline = {r["device"]: r["images_per_s"] for r in rows if r["config"].startswith("plain")}
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\n(CPU threads: OMP_NUM_THREADS={threads})\n")
    print("| device | path | images | images/s | vs plain loop | peak RSS (MB) | peak CUDA (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cuda = f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "-"
        ratio = r["images_per_s"] / baseline[r["device"]]
        print(f"| {r['device']} | {r['config']} | {r['images']} | {r['images_per_s']:.2f} | {ratio:.2f}x "
              f"| {r['peak_rss_mb']:.0f} | {cuda} |")


if __name__ == "__main__":
    main()
