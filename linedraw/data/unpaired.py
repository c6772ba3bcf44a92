"""Unpaired photo/drawing data for training, with a deterministic sampler so a resumed run sees the same batches.

Each training item is a photo (with its optional segmentation mask and geometry target, cropped together) and an
unrelated drawing. `EpochSampler` draws (photo index, drawing index, augmentation seed) triples from a generator
seeded by (seed, epoch): the data order of any epoch can be replayed exactly after a restart.
"""
from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, Sampler

from linedraw.config import DataConfig
from linedraw.errors import LinedrawError
from linedraw.images import ImageError, list_images, open_image
from linedraw.teachers.targets import TARGET_SUFFIXES, files_by_stem, read_target_map

log = logging.getLogger(__name__)

MASK_SUFFIXES = (".png",)


class DataError(LinedrawError, FileNotFoundError):
    """A data folder or list the config names that is missing or holds no images; the message names it."""


@dataclass(frozen=True)
class PhotoItem:
    path: Path
    mask: Path | None = None
    target: Path | None = None


def _by_stem(folder: Path, suffixes: tuple[str, ...], key: str) -> dict[str, Path]:
    """`teachers.targets.files_by_stem` of the folder the config key `key` names (two files for a stem: an error)."""
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder ({key})")
    return files_by_stem(folder, suffixes, f"{key} files")


def _resolve(root: Path, path: str) -> Path:
    p = Path(path)
    return p if p.is_absolute() else root / p


def _read_ids(path: Path, key: str) -> set[str]:
    try:
        return {line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()}
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the held-out ids ({key}): {err.strerror or err}") from None


def collect_sources(cfg: DataConfig) -> tuple[list[PhotoItem], list[Path]]:
    """List every photo (with its mask/target, matched by stem) and drawing the config names; no silent caps."""
    root = Path(cfg.root)
    photos: list[PhotoItem] = []
    for i, src in enumerate(cfg.photos):
        folder = _resolve(root, src.path)
        files = [p for p, _ in list_images([folder])] if folder.is_dir() else []
        if not files:
            raise DataError(f"{folder}: {'no photos found' if folder.is_dir() else 'no such folder'} "
                            f"(data.photos entry {src.path!r}, data.root={root})")
        key = f"data.photos[{i}]"
        masks = _by_stem(_resolve(root, src.masks), MASK_SUFFIXES, f"{key}.masks") if src.masks else {}
        targets = _by_stem(_resolve(root, src.targets), TARGET_SUFFIXES, f"{key}.targets") if src.targets else {}
        photos += [PhotoItem(p, masks.get(p.stem), targets.get(p.stem)) for p in files]
        log.info("photos %s: %d (%d with masks, %d with targets)", folder, len(files),
                 sum(p.stem in masks for p in files), sum(p.stem in targets for p in files))
    drawings: list[Path] = []
    for i, src in enumerate(cfg.drawings):
        folder = _resolve(root, src.path)
        files = [p for p, _ in list_images([folder])] if folder.is_dir() else []
        if src.exclude:
            held_out = _read_ids(_resolve(root, src.exclude), f"data.drawings[{i}].exclude")
            kept = [p for p in files if p.stem not in held_out and p.stem.split("_")[0] not in held_out]
            log.info("drawings %s: %d held out by %s", folder, len(files) - len(kept), src.exclude)
            files = kept
        if not files:
            raise DataError(f"{folder}: {'no drawings found' if folder.is_dir() else 'no such folder'} "
                            f"(data.drawings entry {src.path!r}, data.root={root})")
        drawings += files
        log.info("drawings %s: %d", folder, len(files))
    return photos, drawings


@dataclass(frozen=True)
class _Crop:
    """One random resize-crop-flip, applied identically to a photo and its mask and target."""

    scale_to: tuple[int, int]  # (width, height) after the short-side resize
    box: tuple[int, int, int, int]
    flip: bool

    @staticmethod
    def draw(rng: random.Random, width: int, height: int, load_size: int, size: int, flip: bool) -> "_Crop":
        scale = load_size / min(width, height)
        w, h = max(size, round(width * scale)), max(size, round(height * scale))
        x, y = rng.randint(0, w - size), rng.randint(0, h - size)
        return _Crop((w, h), (x, y, x + size, y + size), flip and rng.random() < 0.5)

    def apply(self, image: Image.Image, resample: int) -> Image.Image:
        image = image.resize(self.scale_to, resample, reducing_gap=None).crop(self.box)
        return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if self.flip else image


def _to_tensor(image: Image.Image) -> torch.Tensor:
    array = np.asarray(image, dtype=np.float32) / 255.0
    if array.ndim == 2:
        array = array[None]
    else:
        array = array.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(array))


def _read_target(path: Path) -> Image.Image:
    """A geometry target map as a 32-bit float PIL image in [0, 1] (8/16-bit PNG or .npy)."""
    return Image.fromarray(read_target_map(path).astype(np.float32), mode="F")


class UnpairedDataset(Dataset):
    """Indexed by `(photo_idx, drawing_idx, aug_seed)`; returns one sample of the batch dict in ARCHITECTURE.md."""

    def __init__(self, photos: list[PhotoItem], drawings: list[Path], size: int = 256, load_size: int = 286,
                 flip: bool = True) -> None:
        if not photos or not drawings:
            raise ValueError("UnpairedDataset needs at least one photo and one drawing")
        self.photos, self.drawings = photos, drawings
        self.size, self.load_size, self.flip = size, load_size, flip
        self._warned: set[Path] = set()

    @classmethod
    def from_config(cls, cfg: DataConfig) -> "UnpairedDataset":
        photos, drawings = collect_sources(cfg)
        return cls(photos, drawings, cfg.size, cfg.load_size, cfg.flip)

    def __len__(self) -> int:
        return len(self.photos)

    def _open(self, path: Path, mode: str, index: int, pool: list) -> tuple[Image.Image, int]:
        """Open `pool[index]`; an unreadable file is reported once and the next file is used instead."""
        for step in range(len(pool)):
            candidate = pool[(index + step) % len(pool)]
            candidate_path = candidate.path if isinstance(candidate, PhotoItem) else candidate
            try:
                return open_image(candidate_path, mode=mode), (index + step) % len(pool)
            except ImageError as err:
                if candidate_path not in self._warned:
                    self._warned.add(candidate_path)
                    log.warning("skipping unreadable training image: %s", err)
        raise ImageError(path, "no readable image in this data source")

    def __getitem__(self, key: tuple[int, int, int]) -> dict:
        photo_idx, drawing_idx, seed = key
        rng = random.Random(seed)
        photo, photo_idx = self._open(self.photos[photo_idx].path, "RGB", photo_idx, self.photos)
        item = self.photos[photo_idx]
        crop = _Crop.draw(rng, *photo.size, self.load_size, self.size, self.flip)
        sample = {"photo": _to_tensor(crop.apply(photo, Image.Resampling.BICUBIC)).clamp_(0, 1),
                  "photo_path": str(item.path)}

        if item.mask is not None:
            mask = Image.open(item.mask)
            if mask.size != photo.size:
                mask = mask.resize(photo.size, Image.Resampling.NEAREST)
            mask = crop.apply(mask, Image.Resampling.NEAREST)
            sample["mask"], sample["has_mask"] = torch.from_numpy(np.array(mask, dtype=np.int64)), True
        else:
            sample["mask"], sample["has_mask"] = torch.zeros(self.size, self.size, dtype=torch.long), False
        if item.target is not None:
            target = crop.apply(_read_target(item.target).resize(photo.size, Image.Resampling.BILINEAR),
                                Image.Resampling.BILINEAR)
            sample["target"], sample["has_target"] = torch.from_numpy(np.array(target))[None].clamp_(0, 1), True
        else:
            sample["target"], sample["has_target"] = torch.zeros(1, self.size, self.size), False

        drawing, _ = self._open(self.drawings[drawing_idx], "L", drawing_idx, self.drawings)
        dcrop = _Crop.draw(rng, *drawing.size, self.load_size, self.size, self.flip)
        sample["drawing"] = _to_tensor(dcrop.apply(drawing, Image.Resampling.BICUBIC)).clamp_(0, 1)
        return sample


class EpochSampler(Sampler):
    """Yields `(photo_idx, drawing_idx, aug_seed)`: photos shuffled, drawings drawn at random, all from (seed, epoch)."""

    def __init__(self, num_photos: int, num_drawings: int, seed: int = 0) -> None:
        self.num_photos, self.num_drawings, self.seed, self.epoch = num_photos, num_drawings, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_photos

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        photos = torch.randperm(self.num_photos, generator=g).tolist()
        drawings = torch.randint(self.num_drawings, (self.num_photos,), generator=g).tolist()
        seeds = torch.randint(2**31 - 1, (self.num_photos,), generator=g).tolist()
        return iter(zip(photos, drawings, seeds))
