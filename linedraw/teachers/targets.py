"""Geometry targets for the geometry loss: map files matched to photos by stem (the paper's way), estimator
plugins that compute maps from photos (`midas[:MODEL_TYPE]` depth through torch.hub, `hed` edges offline),
and `precompute`, which writes an estimator's maps for a photo set as 16-bit PNGs.

A target map is one float32 channel in [0, 1] with the photo's size: depth maps are 1 = near, edge maps are
1 = edge.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from linedraw.errors import InvalidFileError, MissingFileError, UsageError
from linedraw.images import ImageError, PathLike, open_image, save_image, to_tensor
from linedraw.teachers.base import FrozenModule, MissingWeightsError

#: Suffixes of target map files (`TargetDirectory`, training's `data.photos[i].targets`).
TARGET_SUFFIXES = (".png", ".npy")


# --- reading map files ---------------------------------------------------------------------------------------

def read_target_map(path: PathLike) -> np.ndarray:
    """Read a target map as float32 (H, W) in [0, 1]: an 8- or 16-bit grayscale image (PNG) or a `.npy` array
    (uint8, uint16, bool, or float already in [0, 1]). Raises ImageError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise ImageError(path, "no such file")
    if path.suffix.lower() == ".npy":
        return _read_npy_map(path)
    return _read_image_map(path)


def _read_npy_map(path: Path) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as err:
        raise ImageError(path, f"not a readable .npy array ({err})") from None
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2 or array.size == 0:
        raise ImageError(path, f"a target map must be a 2-D array (H, W), got shape {array.shape}")
    return _to_unit_range(path, array)


def _read_image_map(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            image.load()
            mode, array = image.mode, np.array(image)
    except (OSError, ValueError, SyntaxError, EOFError) as err:
        raise ImageError(path, f"not a readable image ({err})") from None
    if mode in ("P", "PA"):  # palette: look at its colours
        with Image.open(path) as image:
            mode, array = "RGB", np.array(image.convert("RGB"))
    if mode in ("LA", "RGB", "RGBA"):
        colour = array[..., : (1 if mode == "LA" else 3)]
        if not (colour == colour[..., :1]).all():
            raise ImageError(path, f"{mode} colour image; a target map must be one grayscale channel")
        array = colour[..., 0]
    elif mode == "I":  # Pillow's mode for some 16-bit PNGs: values must fit 16 bits
        if array.min() < 0 or array.max() > 65535:
            raise ImageError(path, "32-bit integer image; target maps must be 8- or 16-bit")
        array = array.astype(np.uint16)
    elif mode not in ("L", "1", "F") and not mode.startswith("I;16"):
        raise ImageError(path, f"unsupported image mode {mode}; use an 8- or 16-bit grayscale PNG or .npy")
    return _to_unit_range(path, array)


def _to_unit_range(path: Path, array: np.ndarray) -> np.ndarray:
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype == np.uint16 or array.dtype == np.dtype(">u2"):
        return array.astype(np.float32) / 65535.0
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise ImageError(path, "target map has NaN or infinite values")
        low, high = float(array.min()), float(array.max())
        if low < 0.0 or high > 1.0:
            raise ImageError(path, f"float target map must lie in [0, 1], got [{low:.4g}, {high:.4g}]; "
                                   "normalise it before saving")
        return array.astype(np.float32)
    raise ImageError(path, f"unsupported dtype {array.dtype}; use uint8, uint16, bool or float in [0, 1]")


def write_target_map(target: np.ndarray | torch.Tensor, path: PathLike) -> None:
    """Write a [0, 1] map (H, W) as a 16-bit grayscale PNG, atomically (temp file + rename)."""
    if isinstance(target, torch.Tensor):
        target = target.detach().float().cpu().numpy()
    target = np.asarray(target, dtype=np.float32).squeeze()
    if target.ndim != 2:
        raise ValueError(f"a target map must be (H, W), got shape {target.shape}")
    pixels = np.round(np.clip(target, 0.0, 1.0) * 65535.0).astype(np.uint16)
    save_image(Image.fromarray(pixels), path, format="PNG")


def files_by_stem(folder: PathLike, suffixes: Iterable[str], what: str = "files") -> dict[str, Path]:
    """The files in `folder` with one of `suffixes` (any case), keyed by stem, to match photos to their maps or
    masks (`photo.jpg` -> `photo.png`). Two files with one stem are an `InvalidFileError` naming both (either
    could be meant); hidden files (such as a writer's temp files) are left out."""
    folder = Path(folder)
    suffixes = {suffix.lower() for suffix in suffixes}
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in suffixes or path.name.startswith(".") or not path.is_file():
            continue
        other = found.setdefault(path.stem, path)
        if other != path:
            raise InvalidFileError(f"{folder}: two {what} for the stem {path.stem!r} ({other.name}, {path.name}); "
                                   "keep one")
    return found


class TargetDirectory:
    """The precomputed maps in one folder, found for a photo by its file stem (`photo.jpg` -> `photo.png`)."""

    def __init__(self, root: PathLike) -> None:
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"target map folder {self.root} does not exist")
        self._by_stem = files_by_stem(self.root, TARGET_SUFFIXES, "maps")

    def path_for(self, photo: PathLike) -> Path | None:
        """The map file for `photo`, or None when the folder has none."""
        return self._by_stem.get(Path(photo).stem)

    def read(self, photo: PathLike) -> np.ndarray | None:
        """The map for `photo` as float32 (H, W) in [0, 1], or None when the folder has none."""
        path = self.path_for(photo)
        return None if path is None else read_target_map(path)

    def __contains__(self, photo: PathLike) -> bool:
        return self.path_for(photo) is not None

    def __len__(self) -> int:
        return len(self._by_stem)


# --- estimators ----------------------------------------------------------------------------------------------

@runtime_checkable
class TargetEstimator(Protocol):
    """Computes target maps from photos: `__call__((B, 3, H, W) RGB in [0, 1]) -> (B, 1, H, W) in [0, 1]`."""

    name: str
    kind: str  # "depth" or "edges"

    def __call__(self, photos: torch.Tensor) -> torch.Tensor: ...

    def to(self, device: torch.device | str) -> "TargetEstimator": ...


#: Estimator factories by name; a factory takes the text after "name:" (or None) and returns an estimator.
ESTIMATORS: dict[str, Callable[[str | None], TargetEstimator]] = {}


def register_estimator(name: str, factory: Callable[[str | None], TargetEstimator]) -> None:
    """Make `build_estimator(f"{name}[:OPTION]")` call `factory(OPTION or None)`; names are unique."""
    if ":" in name or not name:
        raise ValueError(f"estimator name {name!r} must be non-empty and have no ':'")
    if name in ESTIMATORS:
        raise ValueError(f"an estimator named {name!r} is already registered")
    ESTIMATORS[name] = factory


def build_estimator(spec: str) -> TargetEstimator:
    """Build the estimator `spec` names: `hed[:WEIGHTS_H5]`, `midas[:MODEL_TYPE]`, or a registered plugin."""
    name, _, option = spec.partition(":")
    if name not in ESTIMATORS:
        raise UsageError(f"unknown target estimator {spec!r}; known: {', '.join(sorted(ESTIMATORS))}")
    return ESTIMATORS[name](option or None)


class HEDEstimator(FrozenModule):
    """Edge targets from HED (BSDS500 weights, offline): an honest stand-in where no depth model exists."""

    kind = "edges"

    def __init__(self, weights: str | None = None) -> None:
        super().__init__()
        from linedraw.teachers.hed import load_hed

        self.name = "hed" if weights is None else f"hed:{weights}"
        self.hed = load_hed(weights)
        self.freeze()

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        return self.hed(photos)


@dataclass(frozen=True)
class _MidasInput:
    size: int
    resize_method: str  # "minimal" (scale as little as possible) or "upper_bound" (fit inside size x size)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: MiDaS model types (torch.hub entry points of intel-isl/MiDaS) and the input each expects, as in its hubconf.
MIDAS_MODELS: dict[str, _MidasInput] = {
    "DPT_Large": _MidasInput(384, "minimal", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "DPT_Hybrid": _MidasInput(384, "minimal", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "MiDaS": _MidasInput(384, "upper_bound", *_IMAGENET),
    "MiDaS_small": _MidasInput(256, "upper_bound", *_IMAGENET),
}
DEFAULT_MIDAS = "DPT_Large"


def midas_model_type(option: str | None) -> str:
    """Validate the MODEL_TYPE of `midas[:MODEL_TYPE]` (offline, before anything is downloaded)."""
    model_type = option or DEFAULT_MIDAS
    if model_type not in MIDAS_MODELS:
        raise UsageError(f"unknown MiDaS model type {model_type!r}; use one of {', '.join(MIDAS_MODELS)}")
    return model_type


class MidasEstimator(FrozenModule):
    """Relative depth from MiDaS via torch.hub (downloads code and weights: needs internet the first time).

    Output is inverse depth, min-max normalised per image, so 1 = nearest."""

    kind = "depth"

    def __init__(self, model_type: str | None = None) -> None:
        super().__init__()
        model_type = midas_model_type(model_type)
        self.name = f"midas:{model_type}"
        self.input = MIDAS_MODELS[model_type]
        try:
            self.net = torch.hub.load("intel-isl/MiDaS", model_type, trust_repo=True)
        except Exception as err:  # network, hub cache or repo errors all surface here
            raise MissingWeightsError(f"could not load MiDaS {model_type!r} through torch.hub ({err}); it needs "
                                      "internet the first time. Offline, precompute maps elsewhere and point the "
                                      "config's `targets` at them, or use the `hed` estimator") from err
        self.register_buffer("mean", torch.tensor(self.input.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(self.input.std).view(1, 3, 1, 1), persistent=False)
        self.freeze()

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        height, width = photos.shape[-2:]
        net_size = _midas_size(height, width, self.input)
        x = F.interpolate(photos, size=net_size, mode="bicubic", align_corners=False, antialias=True)
        depth = self.net((x.clamp(0, 1) - self.mean) / self.std).unsqueeze(1)
        depth = F.interpolate(depth, size=(height, width), mode="bicubic", align_corners=False)
        low = depth.amin(dim=(1, 2, 3), keepdim=True)
        high = depth.amax(dim=(1, 2, 3), keepdim=True)
        return ((depth - low) / (high - low).clamp_min(1e-8)).clamp(0, 1)


def _midas_size(height: int, width: int, spec: _MidasInput) -> tuple[int, int]:
    """Network input size as MiDaS's own Resize computes it (keep aspect, multiples of 32)."""
    scale_h, scale_w = spec.size / height, spec.size / width
    if spec.resize_method == "minimal":
        scale = scale_w if abs(1 - scale_w) < abs(1 - scale_h) else scale_h
        return (max(32, round(scale * height / 32) * 32), max(32, round(scale * width / 32) * 32))
    scale = min(scale_h, scale_w)
    return (max(32, math.floor(scale * height / 32) * 32), max(32, math.floor(scale * width / 32) * 32))


register_estimator("hed", HEDEstimator)
register_estimator("midas", MidasEstimator)


# --- precomputing ----------------------------------------------------------------------------------------------

@dataclass
class PrecomputeSummary:
    """What `precompute` did: maps written, photos skipped because their map existed, and failures."""

    written: list[Path] = field(default_factory=list)
    skipped: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)

    def __str__(self) -> str:
        return f"{len(self.written)} written, {len(self.skipped)} skipped (already done), {len(self.failed)} failed"


def precompute(photos: Iterable[PathLike], out_dir: PathLike, estimator: TargetEstimator, size: int | None = None,
               skip_existing: bool = True, device: torch.device | str = "cpu",
               progress: bool = True) -> PrecomputeSummary:
    """Write `estimator`'s map of each photo to `out_dir/<stem>.png` (16-bit, atomic), with a progress bar unless
    `progress` is False.

    Resumable: photos whose map exists are skipped. `size` caps the longer side the estimator sees (the map is
    resized back to the photo's size). Unreadable photos are skipped and listed in the summary's `failed`."""
    from tqdm import tqdm

    photos = [Path(p) for p in photos]
    _check_unique_stems(photos)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    estimator = estimator.to(device)
    summary = PrecomputeSummary()
    for photo in tqdm(photos, desc=f"precompute {estimator.name}", unit="photo", dynamic_ncols=True,
                      disable=not progress):
        target_path = out_dir / f"{photo.stem}.png"
        if skip_existing and target_path.exists():
            summary.skipped.append(photo)
            continue
        try:
            image = to_tensor(open_image(photo, "RGB"))[None].to(device)
        except ImageError as err:
            summary.failed.append((photo, err.reason))
            continue
        with torch.inference_mode():
            target = estimator(_limit_size(image, size))
            if target.shape[-2:] != image.shape[-2:]:
                target = F.interpolate(target, size=image.shape[-2:], mode="bilinear", align_corners=False)
        write_target_map(target[0, 0], target_path)
        summary.written.append(target_path)
    return summary


def _limit_size(image: torch.Tensor, size: int | None) -> torch.Tensor:
    height, width = image.shape[-2:]
    if size is None or max(height, width) <= size:
        return image
    scale = size / max(height, width)
    new = (max(1, round(height * scale)), max(1, round(width * scale)))
    return F.interpolate(image, size=new, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)


def _check_unique_stems(photos: list[Path]) -> None:
    seen: dict[str, Path] = {}
    for photo in photos:
        other = seen.setdefault(photo.stem, photo)
        if other != photo:
            raise InvalidFileError(f"{other} and {photo} share the stem {photo.stem!r}; target maps are matched to "
                                   "photos by stem, so rename one or precompute them into separate folders")
