"""A sketch-aware embedder: a pretrained image encoder (frozen, or with a few named layers unfrozen) plus a
trained projection head, saved as safetensors + JSON and loaded without unpickling.

It has the `ImageEncoder` interface of `linedraw.teachers.semantic` (`name`, `embed_dim`, `input_size`,
`encode`), so a saved directory is a normal `--embedder` for `index build`, `search` and `eval retrieval`.
"""
from __future__ import annotations

import fnmatch
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from linedraw.errors import UsageError
from linedraw.images import write_atomic_path

WEIGHTS_FILE = "embedder.safetensors"
CONFIG_FILE = "embedder.json"
FORMAT = "linedraw-trained-embedder"


class ProjectionHead(nn.Module):
    """L2-normalised base features -> linear skip + small MLP -> `out_dim`.

    The skip path keeps the base's geometry available (important for classes never seen in training); the MLP
    adds the non-linear, sketch-specific correction."""

    def __init__(self, in_dim: int, out_dim: int = 512, hidden_dim: int = 1024) -> None:
        super().__init__()
        self.skip = nn.Linear(in_dim, out_dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = F.normalize(features, dim=-1)
        return self.skip(x) + self.mlp(x)


class TrainedEmbedder(nn.Module):
    """`base` ImageEncoder + `ProjectionHead`; `encode` returns L2-normalised (B, embed_dim) embeddings.

    `unfreeze` holds fnmatch patterns over the base's parameter names (e.g. `model.blocks.6.*`); the base stays
    in eval mode either way (batch-norm statistics are not re-estimated from small mixed-domain batches)."""

    def __init__(
        self,
        base: nn.Module,
        base_spec: str,
        embed_dim: int = 512,
        hidden_dim: int = 1024,
        unfreeze: Sequence[str] = (),
        name: str | None = None,
    ) -> None:
        super().__init__()
        self.base = base
        self.base_spec = base_spec
        self.embed_dim = int(embed_dim)
        self.hidden_dim = int(hidden_dim)
        self.input_size = base.input_size
        self.name = name or f"trained[{base_spec}]"
        self.unfreeze = list(unfreeze)
        self.head = ProjectionHead(int(base.embed_dim), self.embed_dim, self.hidden_dim)
        self.base.requires_grad_(False)
        for param_name in self.unfrozen_names():
            self.base.get_parameter(param_name).requires_grad_(True)

    def unfrozen_names(self) -> list[str]:
        """Names of base parameters matched by the `unfreeze` patterns; a pattern matching nothing is an error."""
        names = [n for n, _ in self.base.named_parameters()]
        chosen: list[str] = []
        for pattern in self.unfreeze:
            hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
            if not hits:
                raise UsageError(
                    f"unfreeze pattern {pattern!r} matches no parameter of {self.base_spec!r}; "
                    f"its last parameters are: {', '.join(names[-4:])}"
                )
            chosen += [n for n in hits if n not in chosen]
        return chosen

    def train(self, mode: bool = True) -> "TrainedEmbedder":
        """Train the head; the base always runs as at inference."""
        super().train(mode)
        self.base.eval()
        return self

    def base_features(self, images: torch.Tensor) -> torch.Tensor:
        """The base encoder's (B, base_dim) features of [0, 1] images with 1 or 3 channels."""
        return self.base.encode(images)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """Base features -> L2-normalised (B, embed_dim) embeddings."""
        return F.normalize(self.head(features), dim=-1)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> L2-normalised (B, embed_dim) embeddings."""
        return self.project(self.base_features(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)


def build_trained_embedder(
    base_spec: str,
    embed_dim: int = 512,
    hidden_dim: int = 1024,
    unfreeze: Sequence[str] = (),
    name: str | None = None,
) -> TrainedEmbedder:
    """A fresh (untrained head) embedder on top of `build_semantic_encoder(base_spec)`."""
    from linedraw.teachers.semantic import build_semantic_encoder

    base = build_semantic_encoder(base_spec)
    return TrainedEmbedder(base, base_spec, embed_dim, hidden_dim, unfreeze, name)


def _base_is_rebuildable(base_spec: str) -> bool:
    """False for random-init bases (`timm:MODEL:random`): their weights must travel with the embedder."""
    return not base_spec.rstrip().endswith(":random")


def _frozen_checksum(model: TrainedEmbedder) -> float:
    """Mean absolute value of the frozen base parameters: detects a base rebuilt with other weights at load."""
    trained = set(model.unfrozen_names())
    total, count = 0.0, 0
    for param_name, param in model.base.named_parameters():
        if param_name not in trained:
            total += float(param.detach().double().abs().sum())
            count += param.numel()
    return total / max(count, 1)


def _state_to_save(model: TrainedEmbedder) -> dict[str, torch.Tensor]:
    """Head weights, plus the unfrozen base parameters (all base weights when the base cannot be rebuilt)."""
    state = {f"head.{k}": v for k, v in model.head.state_dict().items()}
    if _base_is_rebuildable(model.base_spec):
        base_state = {n: model.base.get_parameter(n) for n in model.unfrozen_names()}
    else:
        base_state = model.base.state_dict()
    state.update({f"base.{k}": v for k, v in base_state.items()})
    return {k: v.detach().cpu().contiguous() for k, v in state.items()}




def save_trained_embedder(
    model: TrainedEmbedder, directory: str | os.PathLike, training: dict[str, Any] | None = None
) -> Path:
    """Write `embedder.safetensors` + `embedder.json` into `directory` (atomically); returns the directory.

    The JSON records the base spec, dims, which base parameters were trained and `training` (free-form info)."""
    from safetensors.torch import save_file

    from linedraw import __version__

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "format": FORMAT,
        "name": model.name,
        "base": model.base_spec,
        "base_dim": int(model.base.embed_dim),
        "embed_dim": model.embed_dim,
        "hidden_dim": model.hidden_dim,
        "input_size": model.input_size,
        "unfreeze": model.unfreeze,
        "trained_base_parameters": model.unfrozen_names(),
        "saved_base": "trained" if _base_is_rebuildable(model.base_spec) else "all",
        "frozen_base_checksum": _frozen_checksum(model),
        "training": training or {},
        "linedraw_version": __version__,
    }
    state = _state_to_save(model)
    write_atomic_path(directory / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": FORMAT}))
    text = json.dumps(config, indent=2) + "\n"
    write_atomic_path(directory / CONFIG_FILE, lambda tmp: Path(tmp).write_text(text))
    return directory


def is_trained_embedder(path: str | os.PathLike) -> bool:
    """True when `path` is a directory (or its JSON / safetensors file) written by `save_trained_embedder`."""
    path = Path(path)
    directory = path if path.is_dir() else path.parent
    return (directory / CONFIG_FILE).is_file() and (directory / WEIGHTS_FILE).is_file()


def load_trained_embedder(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> TrainedEmbedder:
    """Rebuild a saved embedder from its directory (or either of its two files), in eval mode.

    The base is rebuilt from its spec, then the saved tensors are loaded over it; no pickle is involved."""
    from safetensors.torch import load_file

    path = Path(path)
    directory = path if path.is_dir() else path.parent
    if not is_trained_embedder(directory):
        raise FileNotFoundError(f"{directory}: not a trained embedder (needs {CONFIG_FILE} and {WEIGHTS_FILE})")
    config = json.loads((directory / CONFIG_FILE).read_text())
    if config.get("format") != FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: format is {config.get('format')!r}, expected {FORMAT!r}")
    model = build_trained_embedder(
        config["base"], config["embed_dim"], config["hidden_dim"], config["unfreeze"], config.get("name")
    )
    state = load_file(str(directory / WEIGHTS_FILE), device=str(map_location))
    head_state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
    base_state = {k[len("base."):]: v for k, v in state.items() if k.startswith("base.")}
    model.head.load_state_dict(head_state, strict=True)
    strict_base = config["saved_base"] == "all"
    missing, unexpected = model.base.load_state_dict(base_state, strict=False)
    if unexpected or (strict_base and missing):
        raise ValueError(
            f"{directory / WEIGHTS_FILE}: base weights do not fit {config['base']!r} "
            f"(unexpected: {unexpected[:3]}, missing: {missing[:3] if strict_base else []})"
        )
    checksum = _frozen_checksum(model)
    if not strict_base and abs(checksum - config["frozen_base_checksum"]) > 1e-6 * max(abs(checksum), 1e-12):
        warnings.warn(
            f"{directory}: the base {config['base']!r} rebuilt here has other weights than at training time "
            f"(checksum {checksum:.8g} vs {config['frozen_base_checksum']:.8g}); embeddings will differ",
            stacklevel=2,
        )
    return model.to(map_location).eval()
