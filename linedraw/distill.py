"""Distillation: train a compact student generator to reproduce a teacher's drawings (`linedraw distill`).

Two resumable stages in one output folder:

1. **Pairs.** Every photo is resized (antialiased, as the converter does) so its short side is each of `sizes`,
   drawn by the teacher whole (so its instance norms see the statistics they see at conversion time) and
   cached as `pairs/<size>/{photo,drawing}/<relative path>.png`. Existing pairs are kept.
2. **Training.** Random crops of the cached pairs with flips; loss `linedraw.losses.distillation_loss` (L1
   weighted towards the teacher's lines + Sobel-gradient L1); AdamW with warm-up and cosine decay. Sample `i` of the run is a pure function of
   (seed, i) and the step counter is saved with the accelerate state, so a resumed run sees exactly the batches
   an uninterrupted one would. Each process of an `accelerate launch` draws its own share of every step.

The student is written as `student.safetensors` + `student.json` (a normal checkpoint: `--checkpoint
OUT/student.safetensors`) at every save.
"""
from __future__ import annotations

import json
import logging
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

log = logging.getLogger("linedraw.distill")

#: Resume points kept (the newest and the one before, in case the newest is damaged).
KEEP_STATES = 2
#: CPU settings bench/convert.py measured best for the fast_generator student (README, Performance).
FAST_INFERENCE = {"channels_last": True, "cpu_backend": "onnxruntime"}
#: Default student, the shipped contour-fast: 8 blocks at 1/4 scale kept 0.965 of the teacher's BSDS500 ODS where
#: 4 kept 0.947, at ~6 images/s on 2 CPU cores (checkpoints/contour-fast.md, README Performance).
DEFAULT_STUDENT = {"model": "fast_generator", "kwargs": {"width": 24, "n_blocks": 8, "n_blocks_half": 1,
                                                        "expansion": 2}}


@dataclass
class DistillConfig:
    """One distillation run; every field is a `linedraw distill` option."""

    photos: list[str]
    output_dir: str
    teacher: str = "contour"
    student: dict = field(default_factory=lambda: json.loads(json.dumps(DEFAULT_STUDENT)))
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


# ------------------------------------------------------------------------------------------------- pairs


def build_pairs(photos: list[str], out: Path, teacher: str, sizes: list[int], device: str = "auto",
                show_progress: bool = True, draw: bool = True) -> tuple[list[tuple[Path, Path]], list[str]]:
    """Draw every photo with the teacher at every size (see the module docstring); returns (pairs, errors).

    `draw=False` only lists the pairs already cached (the other processes of a multi-process run)."""
    from tqdm.auto import tqdm

    from linedraw.checkpoint import load_generator
    from linedraw.convert import Converter, _processing_shape, _resize, pil_to_uint8
    from linedraw.images import ImageError, list_images, open_image, save_image

    files = list_images(photos)
    if not files:
        raise FileNotFoundError(f"no images found in {' '.join(photos)}")
    jobs = [(path, size, out / "pairs" / str(size) / "photo" / rel.with_suffix(".png"),
             out / "pairs" / str(size) / "drawing" / rel.with_suffix(".png"))
            for size in sizes for path, rel in files]
    todo = [job for job in jobs if not job[3].is_file()]
    errors: list[str] = []
    if todo and draw:
        model, config = load_generator(teacher)
        converter = Converter(model, config, size=0, batch_size=1, device=device)
        for path, size, photo_path, drawing_path in tqdm(todo, desc=f"teacher drawings ({teacher})", unit="photo",
                                                         disable=not show_progress):
            try:
                photo = pil_to_uint8(open_image(path))
            except ImageError as err:
                errors.append(str(err))
                continue
            shape = _processing_shape(*photo.shape[-2:], size)
            photo = _resize(photo.float() / 255.0, shape).mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
            drawing = converter.convert_tensors([photo])[0]
            photo_path.parent.mkdir(parents=True, exist_ok=True)
            drawing_path.parent.mkdir(parents=True, exist_ok=True)
            save_image(Image.fromarray(photo.permute(1, 2, 0).numpy()), photo_path)
            save_image(drawing.cpu(), drawing_path)  # written last: its presence marks the pair complete
    pairs = [(photo_path, drawing_path) for _, _, photo_path, drawing_path in jobs if drawing_path.is_file()]
    return pairs, errors


class PairCrops(Dataset):
    """Sample `i` is a random crop (and flip) of a random cached pair, drawn from a generator seeded by (seed, i)."""

    def __init__(self, pairs: list[tuple[Path, Path]], crop: int, seed: int = 0) -> None:
        if not pairs:
            raise ValueError("no photo/drawing pairs to train on")
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


def lr_at(step: int, config: DistillConfig) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `steps`."""
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    progress = (step - config.warmup) / max(1, config.steps - config.warmup)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


class _Counter:
    """The step counter, saved and restored by accelerate with the rest of the state."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def _ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers ignore SIGINT/SIGTERM: the main process saves, then shuts them down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


# ------------------------------------------------------------------------------------------------- training


def distill(config: DistillConfig, show_progress: bool = True) -> dict:
    """Run (or resume) a distillation; returns a summary (steps, final loss, pairs, errors, student path)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    from linedraw.checkpoint import load_generator, publish_step_dir, save_generator
    from linedraw.losses import distillation_loss
    from linedraw.models import create_model

    if config.crop % 4 or config.crop < 16:
        raise ValueError(f"crop must be a multiple of 4 and at least 16, got {config.crop}")
    out = Path(config.output_dir)
    accelerator = Accelerator(cpu=config.device == "cpu")
    _, teacher_config = load_generator(config.teacher)
    sizes = config.sizes or [int(teacher_config.get("inference", {}).get("size", 512))]
    if min(sizes) < config.crop:
        raise ValueError(f"every size must be at least the crop ({config.crop}), got {sizes}")

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

    torch.manual_seed(config.seed)
    student = create_model(config.student["model"], **config.student.get("kwargs", {}))
    optimizer = torch.optim.AdamW(student.parameters(), lr=config.lr, weight_decay=0.0)
    student, optimizer = accelerator.prepare(student, optimizer)
    counter = _Counter()
    accelerator.register_for_checkpointing(counter)
    state_root = out / "state"
    latest = state_root / "latest"
    if latest.is_file():
        accelerator.load_state(str(state_root / latest.read_text().strip()))
        log.info("resumed at step %d", counter.step)

    student_config = {
        **config.student,
        # Measured by bench/convert.py for the fast_generator student on CPU: channels-last and ONNX Runtime win.
        "inference": {"size": sizes[0], **(FAST_INFERENCE if config.student["model"] == "fast_generator" else {})},
        "distillation": {"teacher": config.teacher, "teacher_model": teacher_config.get("model"),
                         "teacher_kwargs": teacher_config.get("kwargs"), "pairs": len(pairs),
                         "settings": {k: v for k, v in asdict(config).items() if k not in ("output_dir",)}},
    }

    def save() -> None:
        name = f"step_{counter.step:08d}"
        tmp = state_root / f"{name}.tmp"
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if accelerator.is_main_process:
            publish_step_dir(state_root, name, KEEP_STATES)
            student_config["distillation"]["steps"] = counter.step
            save_generator(accelerator.unwrap_model(student), out / "student", student_config)
        accelerator.wait_for_everyone()

    stop: dict[str, int | None] = {"signal": None}

    def request_stop(signum: int, _frame) -> None:
        stop["signal"] = signum

    previous = {s: signal.signal(s, request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    dataset = PairCrops(pairs, config.crop, config.seed)
    sampler = StepSampler(counter.step, config.steps, config.batch_size, accelerator.process_index,
                          accelerator.num_processes)
    loader = DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, num_workers=config.workers,
                        worker_init_fn=_ignore_stop_signals, pin_memory=accelerator.device.type == "cuda")
    progress = tqdm(total=config.steps, initial=counter.step, desc="distill", unit="step",
                    disable=not (show_progress and accelerator.is_main_process), dynamic_ncols=True)
    metrics = out / "metrics.jsonl"
    running: list[torch.Tensor] = []  # detached losses: reading them every step would sync the GPU every step
    start_time = time.time()
    student.train()
    try:
        for photo, drawing in loader:
            for group in optimizer.param_groups:
                group["lr"] = lr_at(counter.step, config)
            photo, drawing = photo.to(accelerator.device), drawing.to(accelerator.device)
            loss = distillation_loss(student(photo), drawing, config.edge_weight, config.line_weight)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            counter.step += 1
            running = running[-49:] + [loss.detach()]
            progress.update(1)
            if counter.step % 50 == 0 or counter.step == config.steps:
                mean = float(torch.stack(running).mean())
                progress.set_postfix(loss=f"{mean:.4f}")
                if accelerator.is_main_process:
                    with metrics.open("a") as handle:
                        handle.write(json.dumps({"step": counter.step, "loss": round(mean, 5),
                                                 "lr": lr_at(counter.step - 1, config),
                                                 "seconds": round(time.time() - start_time, 1)}) + "\n")
            done = counter.step >= config.steps
            if done or stop["signal"] is not None or counter.step % config.save_every == 0:
                save()
            if stop["signal"] is not None:
                break
        if counter.step >= config.steps and not (out / "student.safetensors").is_file():
            save()  # a rerun of a finished run (or steps=0) still leaves the student
    finally:
        progress.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return {"step": counter.step, "steps": config.steps, "stopped_by": stop["signal"],
            "loss": float(torch.stack(running).mean()) if running else None, "pairs": len(pairs), "errors": errors,
            "student": str(out / "student.safetensors")}
