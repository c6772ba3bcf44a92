"""Generator checkpoints: safetensors weights plus a JSON config that says how to rebuild the network.

A checkpoint is `<stem>.safetensors` + `<stem>.json` (`{"model": registry name, "kwargs": {...},
"linedraw_version": ..., ...}`); the config is also embedded in the safetensors metadata, so the weights
file alone is enough. Loading never unpickles anything.

`load_generator` accepts three kinds of reference:

- a shipped name such as "contour": `<name>.safetensors` looked up in, in order, every directory of the
  `LINEDRAW_CHECKPOINTS` environment variable (os.pathsep-separated), the `checkpoints/` folder at the root
  of a source checkout (next to the `linedraw` package), and `linedraw/checkpoints/` inside an installed
  package (for wheels that bundle weights). An installed package without bundled weights finds shipped
  checkpoints once `LINEDRAW_CHECKPOINTS` points at a copy of the repo's `checkpoints/` folder;
- a path to a `.safetensors` or `.json` file;
- a training output directory: `checkpoints/latest` names the newest `checkpoints/step_XXXXXXXX/`, which
  holds `G_A.safetensors` + `G_A.json` (a step directory itself works too).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from linedraw.errors import LinedrawError
from linedraw.images import write_atomic, write_text_atomic

#: Environment variable listing extra directories of shipped checkpoints (searched first).
ENV_VAR = "LINEDRAW_CHECKPOINTS"
#: Metadata key of the safetensors file that carries the JSON config.
METADATA_KEY = "linedraw_config"
#: Suffixes of pickle checkpoints (PyTorch, Lightning, Hugging Face), refused because unpickling runs code.
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
#: File name stem of the photo->drawing generator inside a training step directory.
TRAINING_STEM = "G_A"


class CheckpointError(LinedrawError):
    """A checkpoint that cannot be found or used; the message says what was looked for."""


@dataclass(frozen=True)
class ShippedCheckpoint:
    """A checkpoint found by name: its weights, JSON config and model card (None when it has none)."""

    name: str
    weights: Path
    config: Path
    card: Path | None


def checkpoint_dirs() -> list[Path]:
    """Directories searched for shipped checkpoints, in priority order (see the module docstring)."""
    dirs = [Path(p) for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    package = Path(__file__).resolve().parent
    dirs += [package.parent / "checkpoints", package / "checkpoints"]
    return dirs


def list_checkpoints() -> list[ShippedCheckpoint]:
    """Every shipped checkpoint by name (the first directory holding a name wins), sorted by name."""
    found: dict[str, ShippedCheckpoint] = {}
    for directory in checkpoint_dirs():
        if not directory.is_dir():
            continue
        for weights in sorted(directory.glob("*.safetensors")):
            if weights.stem not in found:
                card = weights.with_suffix(".md")
                found[weights.stem] = ShippedCheckpoint(
                    weights.stem, weights, weights.with_suffix(".json"), card if card.is_file() else None
                )
    return [found[name] for name in sorted(found)]


def save_generator(model: nn.Module, path: str | os.PathLike, config: dict[str, Any], half: bool = False) -> Path:
    """Write `model`'s weights to `<stem>.safetensors` and `config` to `<stem>.json` (both atomically).

    `config` must hold "model" (registry name) and "kwargs" (its constructor arguments); anything else
    (training step, data, losses) is kept as is. `half=True` stores float16 weights (half the size; loading
    restores float32). Returns the weights path.
    """
    from safetensors.torch import save

    from linedraw import __version__

    if "model" not in config or "kwargs" not in config:
        raise ValueError("config must contain 'model' (registry name) and 'kwargs' (its constructor arguments)")
    config = {**config, "linedraw_version": __version__, "dtype": "float16" if half else "float32"}
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    _check_architecture(state, config, where=str(path))

    stem = Path(path)
    if stem.suffix in (".safetensors", ".json"):
        stem = stem.with_suffix("")
    weights, config_path = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    text = json.dumps(config, indent=2, sort_keys=True) + "\n"
    write_atomic(weights, lambda handle: handle.write(save(state, metadata={METADATA_KEY: text, "format": "pt"})))
    write_atomic(config_path, lambda handle: handle.write(text.encode("utf-8")))
    return weights


def publish_step_dir(root: str | os.PathLike, name: str, keep: int) -> Path:
    """Rename the finished `root/<name>.tmp` to `root/<name>`, point `root/latest` at it (atomic replace) and
    delete all but the newest `keep` step directories, so an interrupted save never becomes the resume point."""
    import shutil

    root = Path(root)
    final = root / name
    if final.exists():
        shutil.rmtree(final)
    (root / f"{name}.tmp").rename(final)
    write_text_atomic(root / "latest", name + "\n")
    done = sorted(p for p in root.glob("step_*") if p.is_dir() and not p.name.endswith(".tmp") and p != final)
    for stale in done[: max(0, len(done) - (keep - 1))]:  # the one just published always stays
        shutil.rmtree(stale)
    return final


def load_generator(name_or_path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a generator from a shipped name, a `.safetensors`/`.json` path or a training output dir.

    Returns `(model in eval mode on device, config)`; raises `CheckpointError` saying what was looked for.
    """
    from safetensors import safe_open
    from safetensors.torch import load_file

    weights, config_path = resolve_checkpoint(name_or_path)
    if config_path.is_file():
        config = _parse_config(config_path.read_text(encoding="utf-8"), where=str(config_path))
    else:
        try:
            with safe_open(str(weights), framework="pt") as handle:
                embedded = (handle.metadata() or {}).get(METADATA_KEY)
        except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
            raise _unreadable(weights, exc) from None
        if embedded is None:
            raise CheckpointError(f"{weights}: no {config_path.name} beside it and no config embedded in it")
        config = _parse_config(embedded, where=f"{weights} (embedded config)")
    try:
        state = load_file(str(weights))
    except Exception as exc:
        raise _unreadable(weights, exc) from None
    _check_architecture(state, config, where=str(weights))  # on the meta device: no memory spent on a bad config
    model = _build_model(config, where=str(weights))
    model.load_state_dict(state)
    return model.to(device).eval(), config


def _unreadable(weights: Path, exc: Exception) -> CheckpointError:
    return CheckpointError(f"{weights}: not a readable safetensors file (truncated or corrupt?): {exc}")


def _parse_config(text: str, where: str) -> dict:
    """The JSON config, checked for the two keys a model is rebuilt from."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: not valid JSON: {exc}") from None
    if not isinstance(config, dict) or not isinstance(config.get("model"), str):
        raise CheckpointError(f"{where}: the config must be a JSON object with a \"model\" name")
    if not isinstance(config.get("kwargs", {}), dict):
        raise CheckpointError(f"{where}: the config's \"kwargs\" must be a JSON object")
    return config


def _build_model(config: dict, where: str) -> nn.Module:
    """Build the model `config` describes (on the current default device), or raise `CheckpointError`."""
    from linedraw.models import create_model

    try:
        return create_model(config["model"], **config.get("kwargs", {}))
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: cannot build model from config {config.get('model')!r}: {exc}") from None


def resolve_checkpoint(name_or_path: str | os.PathLike) -> tuple[Path, Path]:
    """The `(weights, config)` paths `name_or_path` refers to (the config file may be missing)."""
    path = Path(name_or_path)
    if path.is_dir():
        return _from_directory(path)
    if path.suffix in (".safetensors", ".json") and path.is_file():
        weights = path.with_suffix(".safetensors")
        if not weights.is_file():
            raise CheckpointError(f"{path}: no weights file {weights.name} beside it")
        return weights, path.with_suffix(".json")
    text = os.fspath(name_or_path)
    if path.suffix.lower() in PICKLE_SUFFIXES and path.is_file():
        raise CheckpointError(
            f"{path} is a pickle checkpoint ({path.suffix}), which linedraw refuses to load: unpickling a file "
            "runs code from it. If you trust it, convert it once: build the model, then "
            "model.load_state_dict(torch.load(path, weights_only=True)) and "
            "linedraw.checkpoint.save_generator(model, 'name', {'model': ..., 'kwargs': {...}})"
        )
    if path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (expected a .safetensors or .json file)")
    if path.suffix or os.sep in text or (os.altsep and os.altsep in text):
        raise CheckpointError(f"checkpoint {text!r} not found: no such file or directory")
    for shipped in list_checkpoints():
        if shipped.name == text:
            return shipped.weights, shipped.config
    searched = ", ".join(str(d) for d in checkpoint_dirs())
    names = ", ".join(c.name for c in list_checkpoints()) or "none"
    raise CheckpointError(
        f"no shipped checkpoint named {text!r}: looked for {text}.safetensors in {searched} "
        f"(shipped: {names}). Give the path of a .safetensors file or a training output directory instead, "
        f"or set {ENV_VAR} to a folder of checkpoints."
    )


def _from_directory(directory: Path) -> tuple[Path, Path]:
    """A training output dir (via checkpoints/latest), a checkpoints/ dir, or a step dir holding G_A.*."""
    if (directory / f"{TRAINING_STEM}.safetensors").is_file():
        return directory / f"{TRAINING_STEM}.safetensors", directory / f"{TRAINING_STEM}.json"
    for checkpoints in (directory / "checkpoints", directory):
        latest = checkpoints / "latest"
        if latest.is_file():
            step_dir = checkpoints / latest.read_text(encoding="utf-8").strip()
            weights = step_dir / f"{TRAINING_STEM}.safetensors"
            if not weights.is_file():
                raise CheckpointError(f"{latest} names {step_dir}, which has no {weights.name}")
            return weights, weights.with_suffix(".json")
        steps = sorted(checkpoints.glob(f"step_*/{TRAINING_STEM}.safetensors"))
        if steps:
            return steps[-1], steps[-1].with_suffix(".json")
    raise CheckpointError(
        f"{directory}: not a checkpoint directory (looked for {TRAINING_STEM}.safetensors in it, "
        f"checkpoints/latest and checkpoints/step_*/{TRAINING_STEM}.safetensors)"
    )


def _check_architecture(state: dict[str, torch.Tensor], config: dict, where: str) -> None:
    """Build the configured model on the meta device (no memory, whatever the config says) and check the
    weights fit it, so a config asking for a huge network is refused before anything is allocated."""
    with torch.device("meta"):
        model = _build_model(config, where)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    actual = {k: tuple(v.shape) for k, v in state.items()}
    if expected != actual:
        missing, extra = sorted(expected.keys() - actual), sorted(actual.keys() - expected)
        wrong = sorted(k for k in expected.keys() & actual.keys() if expected[k] != actual[k])
        raise CheckpointError(
            f"{where}: weights do not fit {config['model']}({config.get('kwargs', {})}): "
            f"missing {missing[:3]}, unexpected {extra[:3]}, wrong shape {wrong[:3]}"
        )
