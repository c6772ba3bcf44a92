"""Model registry: build any linedraw network by name, so checkpoints can record how to rebuild it."""
from __future__ import annotations

from typing import Callable, TypeVar

import torch.nn as nn

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Decorator adding a model class or factory to the registry under `name` (names are unique)."""

    def decorator(fn: F) -> F:
        if name in _REGISTRY:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = fn
        return fn

    return decorator


def create_model(name: str, **kwargs) -> nn.Module:
    """Build the registered model `name` with `kwargs`, e.g. `create_model("resnet_generator", ngf=64)`."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _REGISTRY[name](**kwargs)


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    return sorted(_REGISTRY)


def size_multiple(model: nn.Module) -> int:
    """What `model`'s input H and W must be multiples of: its `size_multiple` attribute (1 when it names none)."""
    return int(getattr(model, "size_multiple", 1))


# Importing the modules registers their models.
from linedraw.models.discriminator import PatchDiscriminator  # noqa: E402
from linedraw.models.generator import ResnetGenerator, crop_to, pad_to_multiple, resnet_generator_resize  # noqa: E402
from linedraw.models.geometry import GeometryHead  # noqa: E402
from linedraw.models.pool import ImagePool  # noqa: E402
from linedraw.models.student import FastGenerator, fast_generator_w24_b8  # noqa: E402

__all__ = [
    "register_model",
    "create_model",
    "list_models",
    "size_multiple",
    "ResnetGenerator",
    "resnet_generator_resize",
    "FastGenerator",
    "fast_generator_w24_b8",
    "PatchDiscriminator",
    "GeometryHead",
    "ImagePool",
    "pad_to_multiple",
    "crop_to",
]
