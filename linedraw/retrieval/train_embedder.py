"""Train the sketch embedder: sketches against gallery images (generated drawings, or raw photos) of the same
class, in P-classes x K-samples batches, with accelerate, a progress bar and exact resume.

When no base parameter is unfrozen (the CPU default), the frozen base runs once per image and augmented
view (`views`, view 0 is the clean image) into a cached feature bank, and training touches only the head:
minutes on a CPU. With `unfreeze` patterns, images are loaded, augmented and encoded at every step.
Every random draw of step s comes from a generator seeded with (seed, s), so a resumed run repeats the
uninterrupted one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from linedraw.data.unpaired import DataError
from linedraw.errors import UsageError
from linedraw.images import write_atomic_path
from linedraw.retrieval.augment import augment
from linedraw.retrieval.losses import retrieval_loss
from linedraw.retrieval.names import photo_id_of_sketch
from linedraw.retrieval.trained import TrainedEmbedder, build_trained_embedder, save_trained_embedder
from linedraw.training.schedules import schedule, warmup_cosine
from linedraw.training.signals import StopOnSignal
from linedraw.training.state import RunStateError, load_torch

RESUME_FILE = "resume.pt"


@dataclass
class EmbedderTrainConfig:
    """Everything one training run needs; stored in the embedder's JSON under `training`."""

    sketches: str
    gallery: str
    output_dir: str
    gallery_kind: str = "drawings"  # "drawings" (line images, line augmentations) or "photos"
    base: str = "efficientnet-lite0"
    embed_dim: int = 512
    hidden_dim: int = 1024
    unfreeze: list[str] = field(default_factory=list)
    classes: list[str] | None = None  # train on these class folders only (the protocol's training split)
    loss: str = "supcon"
    temperature: float = 0.1
    margin: float = 0.2
    instance_weight: float = 0.5
    steps: int = 500
    classes_per_batch: int = 16
    samples_per_class: int = 4
    lr: float = 1e-3
    weight_decay: float = 0.05
    views: int = 4
    augment: bool = True
    batch_size: int = 32
    save_every: int = 500
    seed: int = 0
    feature_cache: str | None = None  # where feature banks are kept (default: output_dir); runs may share one

    def validate(self) -> None:
        """Raise UsageError naming the first setting out of range (before anything is computed or written)."""
        from linedraw.retrieval.losses import LOSSES

        if self.gallery_kind not in ("drawings", "photos"):
            raise UsageError(f"gallery_kind must be 'drawings' or 'photos', got {self.gallery_kind!r}")
        if self.loss not in LOSSES:
            raise UsageError(f"unknown loss {self.loss!r}; choose from {sorted(LOSSES)}")
        for name in ("embed_dim", "hidden_dim", "steps", "classes_per_batch", "samples_per_class", "views",
                     "batch_size", "save_every"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise UsageError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("weight_decay", "margin", "instance_weight"):
            if getattr(self, name) < 0:
                raise UsageError(f"{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class LabeledImages:
    """Image files with integer class ids and instance ids (same id = same source photo)."""

    paths: list[Path]
    labels: torch.Tensor
    instances: torch.Tensor
    class_names: list[str]


def scan_pairs(
    sketch_root: str | os.PathLike, gallery_root: str | os.PathLike, classes: Sequence[str] | None = None
) -> tuple[LabeledImages, LabeledImages]:
    """(sketches, gallery) from two trees of class folders; a sketch `<photo-id>-N.*` pairs with the gallery
    image of stem `<photo-id>` in the same class (its instance id); unpaired sketches get unique ids."""
    sketch_root, gallery_root = Path(sketch_root), Path(gallery_root)
    available = sorted(p.name for p in gallery_root.iterdir() if p.is_dir() and (sketch_root / p.name).is_dir())
    names = sorted(classes) if classes is not None else available
    missing = sorted(set(names) - set(available))
    if missing:
        raise DataError(f"class folders missing under {sketch_root} or {gallery_root}: {', '.join(missing)}")
    if not names:
        raise DataError(f"no class folders in both {sketch_root} and {gallery_root}")
    gallery_paths, gallery_labels, stems = [], [], {}
    for label, name in enumerate(names):
        for path in _class_images(gallery_root / name):
            stems[(name, path.stem)] = len(gallery_paths)
            gallery_paths.append(path)
            gallery_labels.append(label)
    sketch_paths, sketch_labels, sketch_instances = [], [], []
    for label, name in enumerate(names):
        for path in _class_images(sketch_root / name):
            instance = stems.get((name, photo_id_of_sketch(path.stem)), -1 - len(sketch_paths))
            sketch_paths.append(path)
            sketch_labels.append(label)
            sketch_instances.append(instance)
    gallery = LabeledImages(
        gallery_paths, torch.tensor(gallery_labels), torch.arange(len(gallery_paths)), list(names)
    )
    sketches = LabeledImages(sketch_paths, torch.tensor(sketch_labels), torch.tensor(sketch_instances), list(names))
    return sketches, gallery


def _class_images(folder: Path) -> list[Path]:
    from linedraw.images import list_images

    return [path for path, _ in list_images([folder])]


def load_images(paths: Sequence[Path], size: int | tuple[int, int], channels: int) -> torch.Tensor:
    """Decode and resize (antialiased) `paths` into (B, channels, H, W) in [0, 1]; raises ImageError."""
    from PIL import Image

    from linedraw.images import open_image, to_tensor

    size = (size, size) if isinstance(size, int) else tuple(size)
    mode = "L" if channels == 1 else "RGB"
    return torch.stack(
        [to_tensor(open_image(p, mode).resize((size[1], size[0]), Image.Resampling.BICUBIC)) for p in paths]
    )


def drop_unreadable(images: LabeledImages, progress: str) -> tuple[LabeledImages, list[str]]:
    """Open every file once; return the readable subset and one error line per unreadable file."""
    from tqdm.auto import tqdm

    from linedraw.images import ImageError, open_image

    keep, errors = [], []
    for i, path in enumerate(tqdm(images.paths, desc=progress, unit="img", leave=False)):
        try:
            open_image(path)
            keep.append(i)
        except ImageError as err:
            errors.append(str(err))
    index = torch.tensor(keep, dtype=torch.long)
    return LabeledImages([images.paths[i] for i in keep], images.labels[index], images.instances[index],
                         images.class_names), errors


class PKSampler:
    """Step s -> P classes x K (sketch, gallery) index pairs; half of the gallery slots hold the sketches'
    own photos (when paired) so the instance term has positives, the rest are other photos of the class."""

    def __init__(self, sketches: LabeledImages, gallery: LabeledImages, classes: int, samples: int) -> None:
        usable = sorted(set(sketches.labels.tolist()) & set(gallery.labels.tolist()))
        if len(usable) < 2:
            raise UsageError(f"need at least 2 classes with both sketches and gallery images, found {len(usable)}")
        self.classes = torch.tensor(usable)
        self.p = min(classes, len(usable))
        self.k = samples
        self.sketch_by_class = {c: torch.nonzero(sketches.labels == c).flatten() for c in usable}
        self.gallery_by_class = {c: torch.nonzero(gallery.labels == c).flatten() for c in usable}
        position = {int(inst): i for i, inst in enumerate(gallery.instances)}
        self.pair = torch.tensor([position.get(int(inst), -1) for inst in sketches.instances])

    def sample(self, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(sketch indices, gallery indices), each of length P*K."""
        chosen = self.classes[torch.randperm(len(self.classes), generator=generator)[: self.p]]
        sketch_idx, gallery_idx = [], []
        for c in chosen.tolist():
            own, pool = self.sketch_by_class[c], self.gallery_by_class[c]
            s = own[torch.randint(len(own), (self.k,), generator=generator)]
            g = pool[torch.randperm(len(pool), generator=generator)[: self.k]]
            if len(g) < self.k:
                g = pool[torch.randint(len(pool), (self.k,), generator=generator)]
            paired = self.pair[s]
            use_pair = (torch.arange(self.k) < self.k // 2) & (paired >= 0)
            sketch_idx.append(s)
            gallery_idx.append(torch.where(use_pair, paired, g))
        return torch.cat(sketch_idx), torch.cat(gallery_idx)


def _step_generator(seed: int, step: int, stream: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 7 + stream)


@torch.no_grad()
def compute_feature_bank(
    model: TrainedEmbedder,
    images: LabeledImages,
    lines: bool,
    views: int,
    seed: int,
    batch_size: int,
    device: torch.device,
    desc: str,
) -> torch.Tensor:
    """(N, views, base_dim) base features; view 0 is the clean image, the others augmented (seeded)."""
    from tqdm.auto import tqdm

    channels = 1 if lines else 3
    out = torch.empty(len(images.paths), views, int(model.base.embed_dim))
    bar = tqdm(total=len(images.paths) * views, desc=desc, unit="img")
    for start in range(0, len(images.paths), batch_size):
        batch = load_images(images.paths[start : start + batch_size], model.input_size, channels)
        for view in range(views):
            x = batch if view == 0 else augment(batch, _step_generator(seed, start, 1000 + view), lines)
            out[start : start + len(batch), view] = model.base_features(x.to(device)).float().cpu()
            bar.update(len(batch))
    bar.close()
    return out


def _bank_key(config: EmbedderTrainConfig, images: LabeledImages, lines: bool) -> str:
    text = json.dumps([config.base, config.views, config.seed, lines, [str(p) for p in images.paths]])
    return hashlib.sha256(text.encode()).hexdigest()


def cached_feature_bank(model: TrainedEmbedder, images: LabeledImages, lines: bool, config: EmbedderTrainConfig,
                        device: torch.device, name: str) -> torch.Tensor:
    """`compute_feature_bank`, stored in the output dir and reused by a resumed run with the same inputs."""
    from safetensors.torch import load_file, safe_open, save_file

    key = _bank_key(config, images, lines)
    cache = Path(config.feature_cache or config.output_dir)
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"bank-{name}-{key[:12]}.safetensors"
    if path.is_file():
        with safe_open(str(path), "pt") as handle:
            if (handle.metadata() or {}).get("key") == key:
                return load_file(str(path))["features"]
    bank = compute_feature_bank(model, images, lines, config.views, config.seed, config.batch_size, device,
                                f"base features ({name})")
    write_atomic_path(path, lambda tmp: save_file({"features": bank.contiguous()}, tmp, metadata={"key": key}))
    return bank




def _trainable_state(model: TrainedEmbedder) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().clone() for n, p in model.named_parameters() if p.requires_grad}


def train_embedder(config: EmbedderTrainConfig, quiet: bool = False) -> tuple[TrainedEmbedder, list[str]]:
    """Run (or resume) one training; writes the embedder into `config.output_dir`.

    Returns the trained model and the error lines of files that could not be read (they were left out)."""
    from accelerate import Accelerator
    from tqdm.auto import tqdm

    config.validate()
    if not config.augment:
        config = dataclasses.replace(config, views=1)
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    accelerator = Accelerator()
    torch.manual_seed(config.seed)
    try:
        model = build_trained_embedder(config.base, config.embed_dim, config.hidden_dim, config.unfreeze,
                                       name=f"trained[{config.base}]:{out.name}")
    except ValueError as err:
        raise UsageError(str(err)) from None
    sketches, gallery = scan_pairs(config.sketches, config.gallery, config.classes)
    sketches, bad_sketches = drop_unreadable(sketches, "checking sketches")
    gallery, bad_gallery = drop_unreadable(gallery, "checking gallery")
    errors = bad_sketches + bad_gallery
    for line in errors:
        print(f"warning: skipped {line}", file=sys.stderr)
    gallery_lines = config.gallery_kind == "drawings"
    sampler = PKSampler(sketches, gallery, config.classes_per_batch, config.samples_per_class)

    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    # linear warm-up over the first 5% of steps, then cosine decay to 0
    scheduler = schedule(optimizer, warmup_cosine(max(1, config.steps // 20), config.steps))
    start = 0
    resume_path = out / RESUME_FILE
    if resume_path.is_file():
        state = load_torch(resume_path)  # weights only: a planted pickle is refused, naming the file
        try:
            saved = json.loads(state["config"])
        except (TypeError, KeyError, json.JSONDecodeError):
            raise RunStateError(f"{resume_path}: not a resume file of this trainer") from None
        ignored = ("save_every", "feature_cache")
        changed = [k for k, v in dataclasses.asdict(config).items() if saved.get(k) != v and k not in ignored]
        if changed:
            raise UsageError(f"{resume_path}: this output dir was trained with other settings ({', '.join(changed)}); "
                             "use a new output dir, or delete resume.pt to start over")
        model.load_state_dict(state["trainable"], strict=False)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = int(state["step"])
    model, optimizer = accelerator.prepare(model, optimizer)
    core: TrainedEmbedder = accelerator.unwrap_model(model)
    device = accelerator.device

    banked = not core.unfrozen_names()
    if banked:
        sketch_bank = cached_feature_bank(core, sketches, True, config, device, "sketches")
        gallery_bank = cached_feature_bank(core, gallery, gallery_lines, config, device, config.gallery_kind)

    def features(images: LabeledImages, bank, index, lines, generator) -> torch.Tensor:
        if banked:
            view = torch.randint(bank.shape[1], (len(index),), generator=generator)
            return bank[index, view].to(device)
        x = load_images([images.paths[i] for i in index], core.input_size, 1 if lines else 3)
        if config.augment:
            x = augment(x, generator, lines)
        return core.base_features(x.to(device))

    def _train_step(step: int) -> tuple[float, dict]:
        """One optimizer step of the embedder; returns the loss and its parts."""
        generator = _step_generator(config.seed, step)
        s_idx, g_idx = sampler.sample(generator)
        q = core.project(features(sketches, sketch_bank if banked else None, s_idx, True, generator))
        g = core.project(features(gallery, gallery_bank if banked else None, g_idx, gallery_lines, generator))
        loss, parts = retrieval_loss(
            q, g, sketches.labels[s_idx].to(device), gallery.labels[g_idx].to(device),
            sketches.instances[s_idx].to(device), gallery.instances[g_idx].to(device),
            kind=config.loss, instance_weight=config.instance_weight,
            temperature=config.temperature, margin=config.margin,
        )
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        bar.set_postfix(loss=f"{value:.3f}")
        return value, parts

    model.train()
    loss_value, parts = float("nan"), {}
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="training", disable=quiet)
    with StopOnSignal() as stop:
        for step in bar:
            loss_value, parts = _train_step(step)
            done = step + 1
            if stop.requested:  # SIGINT/SIGTERM: save where we are, then stop like Ctrl-C
                if accelerator.is_main_process:
                    _save_resume(resume_path, core, optimizer, scheduler, done, config)
                bar.close()
                raise KeyboardInterrupt(f"stopped by signal {stop.signum} after step {done}; rerun to resume")
            if done % config.save_every == 0 and done < config.steps and accelerator.is_main_process:
                _save_resume(resume_path, core, optimizer, scheduler, done, config)
    bar.close()

    model.eval()
    bar.close()

    model.eval()
    if accelerator.is_main_process:
        info = {
            "config": dataclasses.asdict(config),
            "sketches": len(sketches.paths),
            "gallery_images": len(gallery.paths),
            "classes": sketches.class_names,
            "skipped_files": len(errors),
            "final_loss": loss_value,
            "final_loss_parts": parts,
        }
        save_trained_embedder(core, out, training=info)
        _save_resume(resume_path, core, optimizer, scheduler, config.steps, config)
    return core, errors


def _save_resume(path: Path, model: TrainedEmbedder, optimizer, scheduler, step: int,
                 config: EmbedderTrainConfig) -> None:
    state = {"trainable": _trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "config": json.dumps(dataclasses.asdict(config))}
    write_atomic_path(path, lambda tmp: torch.save(state, tmp))
