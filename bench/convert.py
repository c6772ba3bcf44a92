"""Benchmark `linedraw convert` against a plain PyTorch eager loop over the teacher's weights, in one run.

All rows read the same 512x768 JPEGs (short side 512, so nothing resizes) and write PNG drawings; every ratio is
images/s over the *teacher's* plain loop on the same device. The plain loop is what one writes by hand: per
file, open -> tensor -> model -> save, batch 1, float32. The CLI path is `linedraw convert` in-process with its
batching, decoding/saving threads and memory format. With a student checkpoint (`--student`, default the
shipped "contour-fast" when present) the table adds the student through the CLI and the CPU variants worth
trying (contiguous vs channels-last memory, torch.compile, ONNX Runtime fp32 and int8 dynamic quantisation of
the exported graph), so only what the table proves is kept. `--big` adds the peak memory of converting one
4096x4096 photo at native resolution (`--size 0`, tiled). Each row runs in its own child process, after a
warm-up, so its peak memory (RSS on CPU, allocated CUDA memory on GPU) is its own. The teacher is
`--checkpoint` when given, else the shipped "contour", else a randomly initialised paper-size generator.

    OMP_NUM_THREADS=2 python bench/convert.py --big       # CPU (and GPU when CUDA is available)
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


_MODELS: dict = {}


def plain_loop(checkpoint: str, files: list[Path], out: Path, device: str, compile: bool = False) -> None:
    """The hand-written baseline: one photo at a time, float32 (optionally torch.compile'd). The model is
    loaded (and compiled) once, during the warm-up run."""
    import torch
    from PIL import Image

    from linedraw.checkpoint import load_generator
    from linedraw.images import to_pil, to_tensor

    if "model" not in _MODELS:
        model, _ = load_generator(checkpoint, device=device)
        _MODELS["model"] = torch.compile(model) if compile else model
    model = _MODELS["model"]
    out.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        for path in files:
            photo = to_tensor(Image.open(path).convert("RGB"))[None].to(device)
            to_pil(model(photo)[0]).save(out / f"{path.stem}.png")


def onnx_loop(checkpoint: str, files: list[Path], out: Path, int8: bool) -> None:
    """The plain loop through ONNX Runtime on the graph `linedraw export --onnx` writes (int8: dynamically
    quantised weights); the session is built once, during the warm-up run."""
    import numpy as np
    import torch
    from PIL import Image

    if "session" not in _MODELS:
        import onnxruntime

        from linedraw.checkpoint import load_generator
        from linedraw.export import export_onnx

        model, _ = load_generator(checkpoint)
        graph = export_onnx(model, out.parent / "model.onnx")
        if int8:
            from onnxruntime.quantization import QuantType, quantize_dynamic

            quantize_dynamic(str(graph), str(out.parent / "model-int8.onnx"), weight_type=QuantType.QUInt8)
            graph = out.parent / "model-int8.onnx"
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        _MODELS["session"] = onnxruntime.InferenceSession(str(graph), options, providers=["CPUExecutionProvider"])
    out.mkdir(parents=True, exist_ok=True)
    for path in files:
        photo = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).transpose(2, 0, 1)[None] / 255.0
        (drawing,) = _MODELS["session"].run(["drawing"], {"photo": photo})
        Image.fromarray((drawing[0, 0] * 255.0).round().astype(np.uint8), mode="L").save(out / f"{path.stem}.png")


def cli_path(checkpoint: str, files: list[Path], out: Path, device: str, options: list[str]) -> None:
    from linedraw.cli import main

    size = [] if "--size" in options else ["--size", "512"]
    code = main(["convert", *map(str, files), "-o", str(out), "--checkpoint", checkpoint, *size,
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
        kind = spec["path"]
        if kind in ("plain", "compile"):
            plain_loop(spec["checkpoint"], subset, target, device, compile=kind == "compile")
        elif kind in ("onnx", "onnx-int8"):
            onnx_loop(spec["checkpoint"], subset, target, int8=kind == "onnx-int8")
        else:
            cli_path(spec["checkpoint"], subset, target, device, spec["options"])

    if spec["warmup"]:
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


def configurations(device: str, batch_size: int | None, workers: int | None,
                   student: bool) -> list[tuple[str, str, str, list[str]]]:
    """(name, path kind, "teacher" | "student", CLI options) to compare on `device`; the teacher's plain loop
    first. None = the CLI's default."""
    cli = (["--batch-size", str(batch_size)] if batch_size is not None else []) \
        + (["--workers", str(workers)] if workers is not None else [])
    label = f"batch {batch_size or 'default'}, {'default' if workers is None else workers} workers"
    configs = [("teacher: plain eager loop (batch 1, fp32)", "plain", "teacher", []),
               (f"teacher: linedraw convert ({label})", "cli", "teacher", cli)]
    if device == "cuda":
        configs.append((f"teacher: linedraw convert --half ({label})", "cli", "teacher", cli + ["--half"]))
    if not student:
        return configs
    configs.append((f"student: linedraw convert ({label})", "cli", "student", cli))
    if device == "cuda":
        configs.append((f"student: linedraw convert --half ({label})", "cli", "student", cli + ["--half"]))
        return configs
    configs += [
        (f"student: linedraw convert --backend torch ({label})", "cli", "student", cli + ["--backend", "torch"]),
        (f"student: linedraw convert --backend torch --channels-last off ({label})", "cli", "student",
         cli + ["--backend", "torch", "--channels-last", "off"]),
        ("student: plain eager loop (contiguous)", "plain", "student", []),
        ("student: plain loop, torch.compile", "compile", "student", []),
        ("student: plain loop, ONNX Runtime fp32", "onnx", "student", []),
        ("student: plain loop, ONNX Runtime int8 (dynamic)", "onnx-int8", "student", []),
    ]
    return configs


def big_configurations(student: bool) -> list[tuple[str, str, str, list[str]]]:
    """One 4096x4096 photo at native resolution (tiled by the CLI): peak memory of teacher and student."""
    rows = [("teacher: 4096x4096 photo, --size 0", "cli", "teacher", ["--size", "0"])]
    if student:
        rows.append(("student: 4096x4096 photo, --size 0", "cli", "student", ["--size", "0"]))
    return rows


def resolve_student(requested: str | None) -> tuple[str | None, str | None]:
    """(checkpoint reference, description) of the student, or (None, None) when there is none."""
    from linedraw.checkpoint import CheckpointError, resolve_checkpoint as resolve

    if requested:
        return requested, requested
    try:
        resolve("contour-fast")
        return "contour-fast", "shipped 'contour-fast'"
    except CheckpointError:
        return None, None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", help="teacher checkpoint name or path (default: contour, else a random one)")
    parser.add_argument("--student", help="student checkpoint name or path (default: contour-fast when shipped)")
    parser.add_argument("--no-student", action="store_true", help="teacher rows only")
    parser.add_argument("--big", action="store_true", help="also measure one 4096x4096 photo at --size 0")
    parser.add_argument("--images", type=int, default=None, help="photos per run (default: 16 on CPU, 256 on GPU)")
    parser.add_argument("--devices", default=None, help="comma-separated (default: cpu, plus cuda when available)")
    parser.add_argument("--batch-size", type=int, default=None, help="CLI batch size (default: the CLI's own on CPU, 16 GPU)")
    parser.add_argument("--workers", type=int, default=None, help="CLI decode/save threads (default: the CLI's own on CPU, 8 GPU)")
    parser.add_argument("--only", help="run only the rows whose name contains this text")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(json.loads(args.child))))
        return

    import torch

    devices = args.devices.split(",") if args.devices else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    rows, failed = [], []
    with tempfile.TemporaryDirectory(prefix="linedraw-bench-") as tmp:
        workdir = Path(tmp)
        teacher, description = resolve_checkpoint(args.checkpoint, workdir)
        student, student_description = (None, None) if args.no_student else resolve_student(args.student)
        checkpoints = {"teacher": teacher, "student": student}
        print(f"teacher: {description}; student: {student_description or 'none'}; "
              "photos 512x768 JPEG -> PNG drawings at 512 px short side")
        for device in devices:
            gpu = device.startswith("cuda")
            count = args.images or (256 if gpu else 16)
            files = make_photos(workdir / f"photos_{count}", count)
            batch_size = args.batch_size or (16 if gpu else None)
            workers = args.workers if args.workers is not None else (8 if gpu else None)
            plan = [(name, kind, role, options, files)
                    for name, kind, role, options in configurations(device, batch_size, workers, student is not None)]
            if args.big:
                big = make_photos(workdir / "big", 1, 4096, 4096)
                plan += [(name, kind, role, options, big) for name, kind, role, options in big_configurations(student is not None)]
            for name, kind, role, options, photos in plan:
                if args.only and args.only not in name and not name.startswith("teacher: plain"):
                    continue
                spec = {"path": kind, "checkpoint": checkpoints[role], "files": [str(f) for f in photos],
                        "device": device, "out": str(workdir / f"out_{device}_{len(rows)}"), "options": options,
                        "warmup": 0 if photos is not files else min(len(photos), (batch_size or 1) * 2 if kind == "cli" else 2)}
                done = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                      text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
                if done.returncode != 0:
                    print(f"  {device:5} {name}: FAILED\n{done.stderr[-2000:]}", flush=True)
                    failed.append(f"{device} {name}")
                    continue
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"device": device, "config": name, "images": len(photos),
                             "photo_size": "512x768" if photos is files else "4096x4096", **result})
                print(f"  {device:5} {name}: {result['images_per_s']:.2f} images/s", flush=True)
    print_table(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"teacher": description, "student": student_description, "rows": rows},
                                              indent=2) + "\n")
    if failed:
        raise SystemExit(f"failed rows: {'; '.join(failed)}")


def print_table(rows: list[dict]) -> None:
    """Markdown table; the ratio is images/s over the plain loop's on the same device."""
    baseline = {r["device"]: r["images_per_s"] for r in rows if r["config"].startswith("teacher: plain")}
    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(f"\n(CPU threads: OMP_NUM_THREADS={threads})\n")
    print("| device | path | images | images/s | vs teacher plain loop | peak RSS (MB) | peak CUDA (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        cuda = f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "-"
        comparable = r["device"] in baseline and r.get("photo_size") == "512x768"  # same photos as the reference
        ratio = f"{r['images_per_s'] / baseline[r['device']]:.2f}x" if comparable else "-"
        print(f"| {r['device']} | {r['config']} | {r['images']} | {r['images_per_s']:.2f} | {ratio} "
              f"| {r['peak_rss_mb']:.0f} | {cuda} |")


if __name__ == "__main__":
    main()
