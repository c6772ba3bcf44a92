"""Training configuration: typed dataclasses read from YAML, with `key.sub=value` overrides and validation.

A config file names every teacher and data source explicitly, so a log or model card can always say what a
run used (e.g. the offline EfficientNet-Lite0 stand-in instead of CLIP). Unknown keys are errors, not ignored.
Every value is type- and range-checked when the config is built (`load_config`), so a bad value fails before a
run folder exists, with a `ConfigError` naming the key and the file (or the override).

Paths: a relative `data.root` written in a config file is resolved from that file's folder, so a config named by
path works from any working directory; `data.root` given as an override (`data.root=...`) is resolved from the
current directory, as a user typing it means. The resolved config holds an absolute `data.root`; the data
source paths (`data.photos`, `data.drawings`, their masks, targets and exclude lists) are relative to it.
`output_dir` and weights files named in teacher specs stay relative to the current directory.

The shipped configs (`smoke`, `contour-offline`, `paper`) are package data in `linedraw/configs/` (the
checkout's `train/configs/` links to them): `find_config("smoke")` finds one by name, any other value is a path.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
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
    root: str = "."  # relative source paths are resolved against this; itself relative to the config file's folder
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
    grey: float = 0.0  # grey-wash penalty on G_A's drawings (linedraw.losses.grey; not in the paper)


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
    mixed_precision: str = "no"  # "no" | "bf16" (passed to accelerate; fp16 is refused, see validate)
    grad_clip: float | None = None
    # Steps at the start of a run in which G_A and G_B stay as they are while the discriminators, geometry head and
    # U-Net learn: a warm-started generator then meets trained critics, not random ones whose gradients unteach it.
    hold_generators_steps: int = 0


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
    # A fresh run starts its nets from this checkpoint (shipped name, G_A .safetensors, or a run folder: G_A and,
    # where saved, D/head/U-Net); tensors that do not fit keep their initialisation. See linedraw.training.warm_start.
    warm_start: str | None = None


class ConfigError(LinedrawError, ValueError):
    """A config file or override that does not match TrainConfig; `key` is the dotted key at fault, if one is."""

    def __init__(self, message: str, key: str | None = None) -> None:
        super().__init__(message)
        self.key = key


#: Keys that existed once and were removed, with what to do instead.
_REMOVED = {
    "geometry.head_init": "it was removed (nothing writes a head file to start from; the geometry head always "
                          "starts fresh): delete it from the config",
}
_SOURCE_LISTS = {(DataConfig, "photos"): PhotoSource, (DataConfig, "drawings"): DrawingSource}


def _check_type(value: Any, hint: Any, key: str) -> Any:
    """`value` as the field type `hint` (int, float, bool, str, X | None, list/tuple of those), else ConfigError."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _check_type(value, inner, key)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}={value!r} must be a list", key)
        items = [_check_type(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if hint is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false", key)
    if hint is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}={value!r} must be a whole number", key)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 2e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key}={value!r} must be a number", key)
        return float(value)
    if hint is str and not isinstance(value, str):
        raise ConfigError(f"{key}={value!r} must be a string", key)
    return value


def _build(cls: type, values: Any, where: str) -> Any:
    """Recursively turn plain YAML values into the dataclass `cls`, type-checking them and rejecting unknown keys."""
    if not isinstance(values, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {values!r}", where or None)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    prefix = f"{where}." if where else ""
    for name in values:
        if f"{prefix}{name}" in _REMOVED:
            raise ConfigError(f"{prefix}{name}: {_REMOVED[prefix + name]}", prefix + name)
    unknown = set(values) - set(fields)
    if unknown:
        raise ConfigError(f"{where or 'config'}: unknown key(s) {sorted(unknown)}; allowed: {sorted(fields)}",
                          f"{prefix}{sorted(unknown)[0]}")
    kwargs = {}
    for name, value in values.items():
        key = f"{prefix}{name}"
        sub = _SOURCE_LISTS.get((cls, name))
        if sub is not None:
            if not isinstance(value, list):
                raise ConfigError(f"{key}={value!r} must be a list of folders", key)
            kwargs[name] = [_build(sub, v if isinstance(v, dict) else {"path": v}, f"{key}[{i}]")
                            for i, v in enumerate(value)]
        elif dataclasses.is_dataclass(hints[name]):
            kwargs[name] = _build(hints[name], value, key)
        else:
            kwargs[name] = _check_type(value, hints[name], key)
    return cls(**kwargs)


def _parse_scalar(text: str) -> Any:
    """Parse an override value the way YAML would (numbers, booleans, null, lists)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text  # not YAML on its own (e.g. "a: b"): the type check says what was expected


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


#: Lower bounds checked by `validate`, by dotted key (None values of optional keys are allowed).
_AT_LEAST = {
    "seed": 0,
    "data.size": 8, "data.load_size": 8, "data.workers": 0,
    "model.ngf": 1, "model.n_blocks": 0, "model.ndf": 1, "model.n_layers_d": 1, "model.pool_size": 0,
    "semantic.patches": 0, "semantic.patch_size": 8,
    "geometry.head_width": 1, "segmentation.num_classes": 1, "segmentation.encoder_depth": 1,
    "optim.batch_size": 1, "optim.epochs": 1, "optim.decay_epoch": 0, "optim.max_steps": 1,
    "optim.hold_generators_steps": 0,
    "log.every": 1, "log.images_every": 1, "log.save_every": 1, "log.keep": 1,
}
_POSITIVE = ("optim.lr", "geometry.lr", "segmentation.lr", "optim.grad_clip")
_CHOICES = {"semantic.distance": ("mse", "cosine"), "geometry.kind": ("l1", "bce"),
            "optim.mixed_precision": ("no", "bf16")}


def _get(cfg: TrainConfig, key: str) -> Any:
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value


def validate(cfg: TrainConfig) -> None:
    """Raise ConfigError (naming the key) for values out of range and settings that cannot work, before any model
    is built."""
    for key, low in _AT_LEAST.items():
        value = _get(cfg, key)
        if value is not None and value < low:
            raise ConfigError(f"{key}={value} must be at least {low}", key)
    for key in _POSITIVE:
        value = _get(cfg, key)
        if value is not None and value <= 0:
            raise ConfigError(f"{key}={value} must be positive", key)
    for name, value in dataclasses.asdict(cfg.loss).items():
        if value < 0:
            raise ConfigError(f"loss.{name}={value} must be >= 0", f"loss.{name}")
    for key in ("optim.beta1", "optim.beta2"):
        if not 0 <= _get(cfg, key) < 1:
            raise ConfigError(f"{key}={_get(cfg, key)} must be in [0, 1)", key)
    for key, values in (("geometry.out_indices", cfg.geometry.out_indices),
                        ("segmentation.decoder_channels", cfg.segmentation.decoder_channels)):
        if not values or min(values) < (0 if key == "geometry.out_indices" else 1):
            raise ConfigError(f"{key}={list(values)} must be a non-empty list of "
                              f"{'indices >= 0' if key == 'geometry.out_indices' else 'positive sizes'}", key)
    if cfg.optim.mixed_precision == "fp16":
        # accelerate updates the one loss scaler after each optimizer step; this loop steps several optimizers
        # (generators, geometry head, U-Net) off one backward pass, which fp16 loss scaling cannot do correctly.
        raise ConfigError("optim.mixed_precision='fp16' is not supported (one loss scaler cannot serve the several "
                          "optimizers stepped off one backward pass); use 'bf16' (Ampere and newer GPUs) or 'no'",
                          "optim.mixed_precision")
    for key, allowed in _CHOICES.items():
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"{key}={_get(cfg, key)!r} must be one of {', '.join(map(repr, allowed))}", key)
    from linedraw.models.augment import parse_policy
    from linedraw.models.generator import UPSAMPLE_MODES, ResnetGenerator

    if cfg.seed >= 2**32:
        raise ConfigError(f"seed={cfg.seed} must be below 2**32", "seed")
    if cfg.loss.semantic > 0 and cfg.semantic.patches and cfg.semantic.patch_size > cfg.data.size:
        raise ConfigError(f"semantic.patch_size={cfg.semantic.patch_size} is larger than the training crop "
                          f"data.size={cfg.data.size}", "semantic.patch_size")
    if cfg.loss.segmentation > 0 and len(cfg.segmentation.decoder_channels) != cfg.segmentation.encoder_depth:
        raise ConfigError(f"segmentation.decoder_channels has {len(cfg.segmentation.decoder_channels)} sizes; the "
                          f"U-Net needs one per encoder level (segmentation.encoder_depth="
                          f"{cfg.segmentation.encoder_depth})", "segmentation.decoder_channels")
    side = cfg.data.size >> cfg.model.n_layers_d  # the PatchGAN's last normalised map is side - 1 pixels wide
    if cfg.loss.gan > 0 and side - 1 < 2:
        raise ConfigError(f"model.n_layers_d={cfg.model.n_layers_d} is too deep for data.size={cfg.data.size}: "
                          f"the discriminator's maps would shrink below 2x2 (use at most "
                          f"{max(1, (cfg.data.size // 3).bit_length() - 1)} layers)", "model.n_layers_d")
    if cfg.data.size % ResnetGenerator.size_multiple:
        raise ConfigError(f"data.size={cfg.data.size} must be a multiple of {ResnetGenerator.size_multiple} (the "
                          "generators' size_multiple)", "data.size")

    if cfg.model.upsample not in UPSAMPLE_MODES:
        raise ConfigError(f"model.upsample={cfg.model.upsample!r} must be one of {', '.join(UPSAMPLE_MODES)}",
                          "model.upsample")
    if not isinstance(cfg.model.diffaugment, str):
        raise ConfigError(f"model.diffaugment={cfg.model.diffaugment!r} must be a string such as "
                          f"'color,translation,cutout' ('' turns DiffAugment off)", "model.diffaugment")
    try:
        parse_policy(cfg.model.diffaugment)
    except ValueError as exc:
        raise ConfigError(f"model.diffaugment: {exc}", "model.diffaugment") from None
    if cfg.data.load_size < cfg.data.size:
        raise ConfigError(f"data.load_size={cfg.data.load_size} must be >= data.size={cfg.data.size}",
                          "data.load_size")
    if not cfg.data.photos or not cfg.data.drawings:
        raise ConfigError("data.photos and data.drawings must each name at least one folder", "data.photos")
    if cfg.optim.decay_epoch > cfg.optim.epochs:
        raise ConfigError(f"optim.decay_epoch={cfg.optim.decay_epoch} is after optim.epochs={cfg.optim.epochs}",
                          "optim.decay_epoch")
    if not any(dataclasses.asdict(cfg.loss).values()):
        raise ConfigError("every loss weight is 0: nothing to train", "loss")


def _read_yaml(path: Path) -> dict:
    """The config file as a dict; a file that is missing or not YAML is a ConfigError naming it (and the line)."""
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({err})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return raw


#: Folder of the shipped training configs (package data).
CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def shipped_configs() -> list[str]:
    """Names of the shipped training configs, e.g. ["contour-offline", "paper", "smoke"]."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def find_config(name_or_path: str | Path) -> Path:
    """The config file `name_or_path` refers to: an existing file, else a shipped config of that name."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    if not path.suffix and "/" not in text and os.sep not in text and (CONFIG_DIR / f"{text}.yaml").is_file():
        return CONFIG_DIR / f"{text}.yaml"
    raise ConfigError(f"{text}: no such config file, nor a shipped config of that name "
                      f"(shipped: {', '.join(shipped_configs()) or 'none'})")


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config (or start from defaults when `path` is None), apply overrides, check every value.

    A relative `data.root` resolves from the config file's folder, or from the current directory when it comes
    from an override or there is no file (see the module docstring). Errors name the key and the file/override."""
    overrides = list(overrides or [])
    path = Path(path) if path is not None else None
    raw = _read_yaml(path) if path is not None else {}
    raw = apply_overrides(raw, overrides)
    overridden = {item.split("=", 1)[0].strip(): item for item in overrides}
    try:
        cfg = _build(TrainConfig, raw, "")
        validate(cfg)
    except ConfigError as err:
        key = err.key or ""
        source = next((f"override {item!r}" for k, item in overridden.items()
                       if key == k or key.startswith(k + ".") or key.startswith(k + "[")), None)
        if source is None:
            source = str(path) if path is not None else "config"
        raise ConfigError(f"{source}: {err}", err.key) from None
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        base = path.parent if path is not None and "data.root" not in overridden else Path.cwd()
        root = base / root
    cfg.data.root = str(Path(os.path.normpath(root.absolute())))
    return cfg


def to_dict(cfg: TrainConfig) -> dict:
    """Plain-dict form (for YAML/JSON dumps into run folders and checkpoints)."""
    out = dataclasses.asdict(cfg)
    out["geometry"]["out_indices"] = list(cfg.geometry.out_indices)
    out["segmentation"]["decoder_channels"] = list(cfg.segmentation.decoder_channels)
    return out


def save_config(cfg: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML, so a run folder records exactly what it ran."""
    from linedraw.images import write_text_atomic

    write_text_atomic(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
