"""Embedders for retrieval: an image encoder whose outputs are L2-normalised, so inner product = cosine.

A spec is whatever `linedraw.teachers.semantic.build_semantic_encoder` accepts (`openclip:MODEL:PRETRAINED`,
`efficientnet-lite0`, `timm:MODEL:random`), or the path of a trained sketch/drawing embedder
(`linedraw.retrieval.trained.load_trained_embedder`).
"""
from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from linedraw.errors import LinedrawError
from linedraw.images import to_tensor


class Embedder:
    """Wraps an ImageEncoder (`name`, `embed_dim`, `input_size`, `encode`) and returns unit-length numpy rows."""

    def __init__(self, encoder: torch.nn.Module, spec: str, device: str | torch.device = "cpu") -> None:
        self.encoder = encoder.eval().requires_grad_(False).to(device)
        self.spec = spec
        self.name = str(getattr(encoder, "name", spec))
        self.dim = int(encoder.embed_dim)
        size = getattr(encoder, "input_size", 224)
        self.input_size: tuple[int, int] = (size, size) if isinstance(size, int) else tuple(size)
        self.device = torch.device(device)

    @torch.inference_mode()
    def embed(self, images: torch.Tensor) -> np.ndarray:
        """(B, 1|3, H, W) images in [0, 1] -> (B, dim) float32, each row of unit L2 norm."""
        features = self.encoder.encode(images.to(self.device, torch.float32))
        return F.normalize(features.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)

    def embed_pil(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed PIL images of any size: each is resized (bicubic, antialiased) to the encoder's square input
        so they stack into one batch; "L" drawings stay one channel."""
        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        size = (self.input_size[1], self.input_size[0])  # PIL wants (width, height)
        single = all(image.mode == "L" for image in images)
        tensors = [to_tensor(image.convert("L" if single else "RGB").resize(size, Image.BICUBIC))
                   for image in images]
        return self.embed(torch.stack(tensors))


def build_embedder(spec: str, device: str | torch.device = "cpu") -> Embedder:
    """The embedder for `spec`: a semantic-encoder spec, or a path to a trained embedder (file or folder)."""
    if os.path.exists(spec):
        from linedraw.retrieval.trained import load_trained_embedder

        return Embedder(load_trained_embedder(spec), os.path.abspath(spec), device)
    from linedraw.teachers.base import MissingWeightsError
    from linedraw.teachers.semantic import build_semantic_encoder

    try:
        with _root_log_kept_on_success():
            encoder = build_semantic_encoder(spec)
    except LinedrawError:
        raise
    except (OSError, RuntimeError) as exc:
        if not spec.startswith("openclip:"):
            raise
        # open_clip downloads tagged weights on first use and raises RuntimeError when it cannot (offline).
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].split(": ")[0]
        raise MissingWeightsError(
            f"embedder {spec!r}: its weights could not be loaded ({reason}); offline, pass a local weights file "
            "(openclip:MODEL:/path/to/weights.pt) or use efficientnet-lite0") from exc
    return Embedder(encoder, spec, device)


@contextlib.contextmanager
def _root_log_kept_on_success() -> Iterator[None]:
    """Hold back what is logged to the root logger meanwhile (open_clip logs its download failure there before
    raising): passed on if the block succeeds, dropped if it raises, whose error then says it once."""
    records: list[logging.LogRecord] = []
    collector = logging.Handler()
    collector.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    root.addHandler(collector)
    try:
        yield
    finally:
        root.removeHandler(collector)
    for record in records:
        root.handle(record)
