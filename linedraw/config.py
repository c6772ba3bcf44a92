"""Training configuration: typed dataclasses read from YAML, with `key.sub=value` overrides and validation.

A config file names every teacher and data source explicitly, so a log or model card can always say what a
run used (e.g. the offline EfficientNet-Lite0 stand-in instead of CLIP). Unknown keys are errors, not ignored.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from linedraw.errors import LinedrawError

@dataclass
class PhotoSource:
    """A folder of photos (domain A), optionally with ground-truth segmentation masks matched by file stem."""

    path: str
    masks: str | None = None  # folder of single-channel PNG class-id masks, `<stem>.png`
    targets: str | None = None  # folder of precomputed geometry target maps, `<stem>.png|.npy`


@dataclass
class DrawingSource:
    """A folder of line drawings (domain B); `exclude` is a file of ids held out (e.g. a test split)."""

    path: str
    exclude: str | None = None  # ids, one per line; a drawing is held out if its stem, or the part before `_`, matches


@dataclass
class DataConfig:
    root: str = "../shared/data"  # relative source paths are resolved against this; itself relative to the working dir
    photos: list[PhotoSource] = field(default_factory=list)
    drawings: list[DrawingSource] = field(default_factory=list)
    size: int = 256  # square training crop
    load_size: int = 286  # short side is resized to this before the random crop (the paper's 1.12 x size)
    flip: bool = True
    workers: int = 2


@dataclass
class ModelConfig:
    ngf: int = 64
    n_blocks: int = 3
    ndf: int = 64
    n_layers_d: int = 3
    pool_size: int = 0  # CycleGAN image pool for the discriminators; 0 = off, as in the paper's code
    upsample: str = "transpose"  # generator upsampling: "transpose" (the paper's) or "resize" (nearest x2 + conv)
    diffaugment: str = ""  # DiffAugment policy before the discriminators, e.g. "color,translation,cutout"; "" = off


@dataclass
class LossWeights:
    """Weight of each loss; 0 turns the loss off and its networks and teachers are never built."""

    gan: float = 1.0
    cycle: float = 0.1
    semantic: float = 10.0
    geometry: float = 10.0
    segmentation: float = 1.0


@dataclass
class SemanticConfig:
    encoder: str = "openclip:ViT-B-32:openai"  # see linedraw.teachers.semantic.build_semantic_encoder
    distance: str = "mse"  # "mse" (paper) or "cosine"
    patches: int = 0  # extra random patches compared besides the whole image
    patch_size: int = 128


@dataclass
class GeometryConfig:
    estimator: str | None = None  # computes targets on the fly ("hed", "midas:DPT_Large") when a photo has no map
    backbone: str = "tf_efficientnet_lite0"  # frozen feature extractor the head reads the drawing through
    backbone_weights: str | None = "efficientnet-lite0"
    out_indices: tuple[int, ...] = (1, 2, 3)
    head_width: int = 64
    head_init: str | None = None  # safetensors file to start the head from
    kind: str = "l1"  # "l1" (paper) or "bce"
    lr: float = 2e-4


@dataclass
class SegmentationConfig:
    encoder: str = "resnet18"
    encoder_weights: str | None = None  # smp encoder weights tag (downloads) or None
    num_classes: int = 81  # COCO: background + 80 classes, as rasterised in ../shared/data/coco128/masks
    ignore_index: int = 255
    encoder_depth: int = 5
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16)
    lr: float = 2e-4


@dataclass
class OptimConfig:
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    batch_size: int = 4
    epochs: int = 100
    decay_epoch: int = 50  # linear decay to 0 from this epoch to the end
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs when smaller)
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16" (passed to accelerate)
    grad_clip: float | None = None


@dataclass
class LogConfig:
    every: int = 50  # scalars to tensorboard + metrics.jsonl
    images_every: int = 500  # image grids to tensorboard
    save_every: int = 1000  # full resumable checkpoint
    keep: int = 3  # how many step checkpoints to keep


@dataclass
class TrainConfig:
    name: str = "run"
    output_dir: str = "runs/run"
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossWeights = field(default_factory=LossWeights)
    semantic: SemanticConfig = field(default_factory=SemanticConfig)
    geometry: GeometryConfig = field(default_factory=GeometryConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    log: LogConfig = field(default_factory=LogConfig)
    notes: str = ""  # free text carried into checkpoints and model cards (e.g. which teacher is a stand-in)


class ConfigError(LinedrawError, ValueError):
    """A config file or override that does not match TrainConfig."""


def _build(cls: type, values: Any, where: str) -> Any:
    """Recursively turn plain YAML values into the dataclass `cls`, rejecting unknown keys."""
    if not dataclasses.is_dataclass(cls):
        return values
    if not isinstance(values, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}")
    kwargs = {}
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for name, value in values.items():
        hint = hints[name]
        sub = _SOURCE_LISTS.get((cls, name))
        if sub is not None:
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{name}: expected a list")
            kwargs[name] = [_build(sub, v if isinstance(v, dict) else {"path": v}, f"{where}.{name}[{i}]")
                            for i, v in enumerate(value)]
        elif isinstance(fields[name].default_factory, type) and dataclasses.is_dataclass(fields[name].default_factory):
            kwargs[name] = _build(fields[name].default_factory, value, f"{where}.{name}")
        elif "tuple" in str(hint) and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    return cls(**kwargs)


_SOURCE_LISTS = {(DataConfig, "photos"): PhotoSource, (DataConfig, "drawings"): DrawingSource}


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, lists)."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` overrides to a plain config dict (values parsed as YAML)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.sub=value")
        key, value = item.split("=", 1)
        node = raw
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = _parse_scalar(value)
    return raw


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError for settings that cannot work, before any model is built."""
    if cfg.data.size % 4:
        raise ConfigError(f"data.size={cfg.data.size} must be a multiple of 4 (the generator downsamples twice)")
    from linedraw.models.augment import parse_policy
    from linedraw.models.generator import UPSAMPLE_MODES

    if cfg.model.upsample not in UPSAMPLE_MODES:
        raise ConfigError(f"model.upsample={cfg.model.upsample!r} must be one of {', '.join(UPSAMPLE_MODES)}")
    if not isinstance(cfg.model.diffaugment, str):
        raise ConfigError(f"model.diffaugment={cfg.model.diffaugment!r} must be a string such as "
                          f"'color,translation,cutout' ('' turns DiffAugment off)")
    try:
        parse_policy(cfg.model.diffaugment)
    except ValueError as exc:
        raise ConfigError(f"model.diffaugment: {exc}") from None
    if cfg.data.load_size < cfg.data.size:
        raise ConfigError(f"data.load_size={cfg.data.load_size} must be >= data.size={cfg.data.size}")
    if not cfg.data.photos or not cfg.data.drawings:
        raise ConfigError("data.photos and data.drawings must each name at least one folder")
    for name, value in dataclasses.asdict(cfg.loss).items():
        if value < 0:
            raise ConfigError(f"loss.{name}={value} must be >= 0")
    if cfg.semantic.distance not in ("mse", "cosine"):
        raise ConfigError(f"semantic.distance={cfg.semantic.distance!r} must be 'mse' or 'cosine'")
    if cfg.geometry.kind not in ("l1", "bce"):
        raise ConfigError(f"geometry.kind={cfg.geometry.kind!r} must be 'l1' or 'bce'")
    if cfg.optim.mixed_precision not in ("no", "fp16", "bf16"):
        raise ConfigError(f"optim.mixed_precision={cfg.optim.mixed_precision!r} must be no, fp16 or bf16")
    if cfg.optim.decay_epoch > cfg.optim.epochs:
        raise ConfigError(f"optim.decay_epoch={cfg.optim.decay_epoch} is after optim.epochs={cfg.optim.epochs}")
    if cfg.loss.gan == 0 and cfg.loss.cycle == 0 and cfg.loss.semantic == 0 and cfg.loss.geometry == 0 \
            and cfg.loss.segmentation == 0:
        raise ConfigError("every loss weight is 0: nothing to train")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, validate."""
    raw: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        raw = yaml.safe_load(path.read_text()) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: top level must be a mapping")
    raw = apply_overrides(raw, overrides or [])
    cfg = _build(TrainConfig, raw, str(path) if path else "config")
    validate(cfg)
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    """Plain-dict form (for YAML/JSON dumps into run folders and checkpoints)."""
    out = dataclasses.asdict(cfg)
    out["geometry"]["out_indices"] = list(cfg.geometry.out_indices)
    out["segmentation"]["decoder_channels"] = list(cfg.segmentation.decoder_channels)
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, so a run folder records exactly what it ran."""
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
