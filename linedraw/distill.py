"""Distillation: train a compact student generator to reproduce a teacher's drawings (`linedraw distill`).

Two resumable stages in one output folder:

1. **Pairs.** Every photo is resized (antialiased, as the converter does) so its short side is each of `sizes`,
   drawn by the teacher whole (so its instance norms see the statistics they see at conversion time) and
   cached as `pairs/<size>/{photo,drawing}/<relative path>.png`. Existing pairs are kept.
2. **Training.** Random crops of the cached pairs with flips; loss `linedraw.losses.distillation_loss` (L1
   weighted towards the teacher's lines + Sobel-gradient L1); AdamW with warm-up and cosine decay. Sample `i` of
   the run is a pure function of (seed, i) and the step counter is saved with the run state (`linedraw.training`:
   safetensors/JSON, nothing unpickled), so a resumed run sees exactly the batches an uninterrupted one would.
   Each process of an `accelerate launch` draws its own share of every step.

The student is written as `student.safetensors` + `student.json` (a normal checkpoint: `--checkpoint
OUT/student.safetensors`) at every save.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from linedraw.convert import resolve_device
from linedraw.errors import UsageError
from linedraw.training.checkpoints import RunCheckpoints
from linedraw.training.schedules import resync, schedule, warmup_cosine
from linedraw.training.signals import StopOnSignal, ignore_stop_signals
from linedraw.training.state import RunState

log = logging.getLogger("linedraw.distill")

#: Resume points kept (the newest and the one before, in case the newest is damaged).
KEEP_STATES = 2
#: Default student: the shipped contour-fast's shape, a named variant registered beside `FastGenerator` (its model
#: card, checkpoints/contour-fast.md, says why this depth).
DEFAULT_STUDENT = "fast_generator_w24_b8"


@dataclass
class DistillConfig:
    """One distillation run; every field is a `linedraw distill` option."""

    photos: list[str]
    output_dir: str
    teacher: str = "contour"
    student: str | dict = DEFAULT_STUDENT  # a registered model name, or {"model": NAME, "kwargs": {...}}
    sizes: list[int] | None = None  # short sides the teacher draws at; None = the teacher's inference size
    crop: int = 192
    batch_size: int = 8
    steps: int = 3000
    lr: float = 2e-3
    warmup: int = 100
    edge_weight: float = 1.0
    line_weight: float = 4.0
    save_every: int = 250
    workers: int = 2
    device: str = "auto"
    seed: int = 0

    def validate(self) -> None:
        """Raise UsageError naming the first argument out of range (before anything is written)."""
        whole = {"crop": 16, "batch_size": 1, "steps": 1, "warmup": 0, "save_every": 1, "workers": 0, "seed": 0}
        for name, low in whole.items():
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise UsageError(f"{name} must be a whole number >= {low}, got {value!r}")
        for name in ("lr", "edge_weight", "line_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0 or (name == "lr" and value == 0):
                raise UsageError(f"{name} must be a {'positive' if name == 'lr' else 'non-negative'} number, "
                                 f"got {value!r}")
        if self.sizes is not None and (not self.sizes or min(self.sizes) < self.crop):
            raise UsageError(f"every size must be at least the crop ({self.crop}), got {self.sizes}")
        if isinstance(self.student, str):
            return
        if not isinstance(self.student, dict) or not isinstance(self.student.get("model"), str) \
                or not isinstance(self.student.get("kwargs", {}), dict):
            raise UsageError(f'student must be a registered model name or {{"model": NAME, "kwargs": {{...}}}}, '
                             f"got {self.student!r}")

    def student_spec(self) -> dict:
        """`student` as the checkpoint JSON records a model: {"model": NAME, "kwargs": {...}}."""
        if isinstance(self.student, str):
            return {"model": self.student, "kwargs": {}}
        return {"model": self.student["model"], "kwargs": dict(self.student.get("kwargs", {}))}


# ------------------------------------------------------------------------------------------------- pairs


def build_pairs(photos: list[str], out: Path, teacher: str, sizes: list[int], device: str = "auto",
                show_progress: bool = True, draw: bool = True) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Draw every photo with the teacher at every size (see the module docstring); returns (pairs, errors).

    The photos are resized and cached first, then the teacher draws the cached files through the conversion
    pipeline (`linedraw.pipeline.convert_files`), so it sees exactly the photo it is paired with, and the
    drawing, written last, marks the pair complete. `draw=False` only lists the pairs already cached (the
    other processes of a multi-process run)."""
    from tqdm.auto import tqdm

    from linedraw.checkpoint import load_generator
    from linedraw.convert import Converter, _processing_shape, _resize, pil_to_uint8
    from linedraw.images import ImageError, display_path, list_images, open_image, save_image
    from linedraw.pipeline import Task, convert_files

    files = list_images(photos)
    if not files:
        raise UsageError(f"photos: no images found in {' '.join(map(str, photos))}")

    def cached(size: int, kind: str, relative: Path) -> Path:
        return out / "pairs" / str(size) / kind / relative.with_suffix(".png")

    errors: list[str] = []
    source_of: dict[Path, Path] = {}
    if draw:
        for path, rel in tqdm(files, desc="photos at the teacher's sizes", unit="photo", disable=not show_progress):
            wanted = [size for size in sizes if not cached(size, "photo", rel).is_file()]
            for size in sizes:
                source_of[cached(size, "photo", rel)] = path
            if not wanted:
                continue
            try:
                photo = pil_to_uint8(open_image(path))
            except ImageError as err:
                errors.append(str(err))
                continue
            for size in wanted:  # the converter's antialiased resize, stored as the 8-bit photo the student sees
                shape = _processing_shape(*photo.shape[-2:], size)
                resized = _resize(photo.float() / 255.0, shape).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
                save_image(Image.fromarray(resized.permute(1, 2, 0).numpy()), cached(size, "photo", rel))
        tasks = [Task(cached(size, "photo", rel), cached(size, "drawing", rel))
                 for size in sizes for _, rel in files if cached(size, "photo", rel).is_file()]
        if any(not task.target.is_file() for task in tasks):
            model, config = load_generator(teacher)
            converter = Converter(model, config, size=0, batch_size=1, device=device)
            convert_files(converter, tasks, skip_existing=True, progress=show_progress,
                          on_error=lambda task, reason: errors.append(
                              f"{display_path(source_of[task.source])}: {reason}"))
    pairs = [(cached(size, "photo", rel), cached(size, "drawing", rel)) for size in sizes for _, rel in files
             if cached(size, "drawing", rel).is_file()]
    return pairs, errors


class PairCrops(Dataset):
    """Sample `i` is a random crop (and flip) of a random cached pair, drawn from a generator seeded by (seed, i)."""

    def __init__(self, pairs: list[tuple[Path, Path]], crop: int, seed: int = 0) -> None:
        if not pairs:
            raise UsageError("no photo/drawing pairs to train on (every photo was unreadable)")
        self.pairs, self.crop, self.seed = pairs, crop, seed

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng([self.seed, index])
        photo_path, drawing_path = self.pairs[int(rng.integers(len(self.pairs)))]
        photo = np.asarray(Image.open(photo_path).convert("RGB"))
        drawing = np.asarray(Image.open(drawing_path).convert("L"))
        h, w = drawing.shape
        if min(h, w) < self.crop:
            raise ValueError(f"{drawing_path}: {w}x{h} is smaller than the {self.crop}-px training crop")
        y, x = int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
        photo, drawing = photo[y : y + self.crop, x : x + self.crop], drawing[y : y + self.crop, x : x + self.crop]
        if rng.random() < 0.5:
            photo, drawing = photo[:, ::-1], drawing[:, ::-1]
        photo_t = torch.from_numpy(photo.copy()).permute(2, 0, 1).float().div_(255.0)
        drawing_t = torch.from_numpy(drawing.copy())[None].float().div_(255.0)
        return photo_t, drawing_t


class StepSampler(Sampler):
    """Sample ids of steps `start..steps-1` for one process: step s, process r holds ids (s*world + r)*batch + j."""

    def __init__(self, start: int, steps: int, batch_size: int, rank: int = 0, world: int = 1) -> None:
        self.start, self.steps, self.batch_size, self.rank, self.world = start, steps, batch_size, rank, world

    def __len__(self) -> int:
        return max(0, self.steps - self.start) * self.batch_size

    def __iter__(self) -> Iterator[int]:
        for step in range(self.start, self.steps):
            first = (step * self.world + self.rank) * self.batch_size
            yield from range(first, first + self.batch_size)


# ------------------------------------------------------------------------------------------------- training


def _accelerator(device: str):
    """An `Accelerator` on the device `device` names (checked by `linedraw.convert.resolve_device`).

    accelerate runs a single process on the current CUDA device, so `cuda:N` makes N current; under
    `accelerate launch` each process keeps its own GPU, and naming one for all of them is refused."""
    from accelerate import Accelerator

    resolved = resolve_device(device)
    if resolved.type == "cuda" and device != "auto" and resolved.index is not None:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise UsageError(f"device={device!r}: under accelerate launch every process uses its own GPU; "
                             "pass device='auto' or 'cuda'")
        torch.cuda.set_device(resolved)
    return Accelerator(cpu=resolved.type == "cpu")


def distill(config: DistillConfig, show_progress: bool = True) -> dict:
    """Run (or resume) a distillation; returns a summary (steps, final loss, pairs, errors, student path)."""
    from tqdm.auto import tqdm

    from linedraw.checkpoint import load_generator, save_generator
    from linedraw.losses import distillation_loss
    from linedraw.models import create_model, size_multiple

    config.validate()
    accelerator = _accelerator(config.device)  # a device this machine lacks fails here, before any work
    out = Path(config.output_dir)
    _, teacher_config = load_generator(config.teacher)
    sizes = config.sizes or [int(teacher_config.get("inference", {}).get("size", 512))]
    if min(sizes) < config.crop:
        raise UsageError(f"crop={config.crop} is larger than the teacher's inference size {sizes[0]}: pass sizes")
    spec = config.student_spec()
    try:
        torch.manual_seed(config.seed)
        student = create_model(spec["model"], **spec["kwargs"])
    except (KeyError, TypeError, ValueError) as err:
        raise UsageError(f"student {config.student!r}: {err}") from None
    if config.crop % size_multiple(student):
        raise UsageError(f"crop must be a multiple of {size_multiple(student)} (the student's size_multiple), "
                         f"got {config.crop}")
    inference = {"size": sizes[0], **getattr(student, "inference_defaults", {})}

    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        pairs, errors = build_pairs(config.photos, out, config.teacher, sizes,
                                    device=str(accelerator.device), show_progress=show_progress)
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        pairs, errors = build_pairs(config.photos, out, config.teacher, sizes, show_progress=False, draw=False)
    for line in errors:
        log.warning("skipped %s", line)
    log.info("%d photo/drawing pairs at sizes %s from teacher %s", len(pairs), sizes, config.teacher)

    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    factor = warmup_cosine(config.warmup, config.steps)
    scheduler = schedule(optimizer, factor)
    student, optimizer = accelerator.prepare(student, optimizer)
    counter = RunState()
    checkpoints = RunCheckpoints(out / "state", accelerator, counter, {"student": student},
                                 {"optimizer": optimizer, "lr": scheduler}, keep=KEEP_STATES)
    if checkpoints.resume() is not None:
        log.info("resumed at step %d", counter.step)
    resync(scheduler, counter.step)

    student_config = {
        **spec,
        "inference": inference,
        "distillation": {"teacher": config.teacher, "teacher_model": teacher_config.get("model"),
                         "teacher_kwargs": teacher_config.get("kwargs"), "pairs": len(pairs),
                         "settings": {k: v for k, v in asdict(config).items() if k not in ("output_dir",)}},
    }

    def save() -> None:
        checkpoints.save()
        if accelerator.is_main_process:
            student_config["distillation"]["steps"] = counter.step
            save_generator(accelerator.unwrap_model(student), out / "student", student_config)
        accelerator.wait_for_everyone()

    dataset = PairCrops(pairs, config.crop, config.seed)
    sampler = StepSampler(counter.step, config.steps, config.batch_size, accelerator.process_index,
                          accelerator.num_processes)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        worker_init_fn=ignore_stop_signals, pin_memory=accelerator.device.type == "cuda")
    progress = tqdm(total=config.steps, initial=counter.step, desc="distill", unit="step",
                    disable=not (show_progress and accelerator.is_main_process), dynamic_ncols=True)
    metrics = out / "metrics.jsonl"
    running: list[torch.Tensor] = []  # detached losses: reading them every step would sync the GPU every step
    start_time = time.time()
    student.train()
    with StopOnSignal() as stop:
        try:
            for photo, drawing in loader:
                photo, drawing = photo.to(accelerator.device), drawing.to(accelerator.device)
                loss = distillation_loss(student(photo), drawing, config.edge_weight, config.line_weight)
                optimizer.zero_grad(set_to_none=True)
                accelerator.backward(loss)
                optimizer.step()
                scheduler.step()
                counter.step += 1
                running = running[-49:] + [loss.detach()]
                progress.update(1)
                if counter.step % 50 == 0 or counter.step == config.steps:
                    mean = float(torch.stack(running).mean())
                    progress.set_postfix(loss=f"{mean:.4f}")
                    if accelerator.is_main_process:
                        with metrics.open("a") as handle:
                            handle.write(json.dumps({"step": counter.step, "loss": round(mean, 5),
                                                     "lr": config.lr * factor(counter.step - 1),
                                                     "seconds": round(time.time() - start_time, 1)}) + "\n")
                done = counter.step >= config.steps
                if done or stop.requested or counter.step % config.save_every == 0:
                    save()
                if stop.requested:
                    break
            if counter.step >= config.steps and not (out / "student.safetensors").is_file():
                save()  # a rerun of a finished run still leaves the student
        finally:
            progress.close()
    return {"step": counter.step, "steps": config.steps, "stopped_by": stop.signum,
            "loss": float(torch.stack(running).mean()) if running else None, "pairs": len(pairs), "errors": errors,
            "student": str(out / "student.safetensors")}
