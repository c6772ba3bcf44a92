"""Converter: photos in, line drawings out, at any size, on any device.

Each photo is resized (antialiased) so its short side is `size` (0 = native resolution), padded to what the
generator needs (H, W multiples of the model's `size_multiple`, at least 16 px), run, cropped back, resized back to
the photo's original size (line art is wanted at the size of the photo), then post-processed (line weight,
threshold, invert). With `thin` or `stroke_width` the strokes are instead thinned to centre lines at the processing
size and redrawn at the output size with a pen of `stroke_width` output pixels (`linedraw.lineart`), so the pen does
not change with `size`; `to_svg` writes the same centre lines as SVG paths (`linedraw.vector`). Photos over
`max_pixels` at the processing size are run in overlapping tiles blended with a raised-cosine window; instance-norm
statistics are computed over the whole image first, tile by tile, so a tiled result matches the untiled one away
from the tile borders instead of changing tone from tile to tile.

Work per photo is bounded before any is done: a photo whose processing size would exceed
`refuse_above_pixels`, or one more elongated than `MAX_ASPECT`:1 when resized to `size` (a 3x3000 strip would
become 512x512000), is refused with `PhotoSizeError`; options out of range raise `UsageError` naming them.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from linedraw.errors import LinedrawError, UsageError
from linedraw.images import DEFAULT_MAX_PIXELS as DEFAULT_REFUSE_PIXELS
from linedraw.images import normalize_mode
from linedraw.models import size_multiple

#: Inference engines: "torch", "onnxruntime" (CPU, float32) and "auto" (the checkpoint's CPU recommendation).
BACKENDS = ("auto", "torch", "onnxruntime")
#: Short side, in pixels, photos are processed at unless told otherwise or the checkpoint recommends another.
DEFAULT_SIZE = 512
#: Largest image (in pixels, at the processing size) run in one piece; larger ones are tiled.
DEFAULT_MAX_PIXELS = 2048 * 2048
#: The same through ONNX Runtime, which keeps buffers sized for the largest input it ran: smaller tiles bound them.
ONNX_MAX_PIXELS = 1024 * 1024
#: Overlap of neighbouring tiles, in pixels at the processing size.
DEFAULT_TILE_OVERLAP = 128
#: Inputs are padded to multiples of the model's `size_multiple` and to at least this many pixels a side
#: (reflection padding inside the generators needs room at 1/4 scale).
MIN_SIDE = 16
#: Largest `size` and `output_size` accepted (a short side of 16384 px is already 268 Mpx for a 4:3 photo).
MAX_SIZE = 16384
#: Most elongated photo (long side / short side) converted at a fixed `size`; size=0 (native) has no such limit.
MAX_ASPECT = 50
#: Largest |line_weight|: lines grow by that many pixels a side, so beyond this the drawing just goes black.
MAX_LINE_WEIGHT = 32


class PhotoSizeError(LinedrawError, ValueError):
    """A photo too large or too elongated to convert with the converter's settings; the message says which."""


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """The torch device `device` names, checked to exist here; "auto" picks CUDA, then Apple MPS, then CPU.

    Under `accelerate launch` / torchrun, "auto" is this process's local GPU (LOCAL_RANK). Raises `UsageError`
    naming the device for names torch does not know and for CUDA/MPS devices this machine lacks (so `cuda:5` fails
    at once, not at the first forward pass).
    """
    if str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise UsageError(f"device={str(device)!r} is not a device: use auto, cpu, cuda, cuda:N or mps") from None
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"device={str(device)!r}: CUDA is not available here (no GPU, or a torch build "
                             "without CUDA); use device='cpu' or 'auto'")
        count = torch.cuda.device_count()
        if resolved.index is not None and resolved.index >= count:
            raise UsageError(f"device={str(device)!r}: this machine has {count} CUDA device(s), "
                             f"cuda:0 to cuda:{count - 1}")
    elif resolved.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise UsageError(f"device={str(device)!r}: Apple MPS is not available here; use device='cpu' or 'auto'")
    return resolved


def _check_int(name: str, value: object, low: int, high: int | None = None) -> int:
    """`value` as an int in [low, high], else `UsageError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UsageError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bounds = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise UsageError(f"{name} must be {bounds}, got {value}")
    return int(value)


def postprocess(
    drawing: torch.Tensor, invert: bool = False, threshold: float | None = None, line_weight: int = 0
) -> torch.Tensor:
    """Line-art finishing on (B, 1, H, W) drawings in [0, 1] (dark lines on white).

    `line_weight` > 0 thickens the dark lines by that many pixels a side (grey-scale erosion), < 0 thins them
    (dilation; lines narrower than 2|n|+1 px vanish), at most `MAX_LINE_WEIGHT`; `threshold` binarises
    (>= threshold becomes white); `invert` gives white lines on black (what ControlNet expects).
    """
    _check_int("line_weight", line_weight, -MAX_LINE_WEIGHT, MAX_LINE_WEIGHT)
    if line_weight:
        k = abs(int(line_weight))
        if line_weight > 0:
            drawing = -F.max_pool2d(-drawing, 2 * k + 1, stride=1, padding=k)
        else:
            drawing = F.max_pool2d(drawing, 2 * k + 1, stride=1, padding=k)
    if threshold is not None:
        drawing = (drawing >= threshold).to(drawing.dtype)
    if invert:
        drawing = 1.0 - drawing
    return drawing


class Converter:
    """Turns PIL photos into PIL line drawings with a generator (G_A); see the module docstring.

    `conv(image)` converts one photo, `conv.convert(images)` a list, `conv.batch(iterable)` streams;
    `conv.to(device)` moves it. `half=True` runs in float16 (CUDA only). `backend="onnxruntime"` runs the
    network through ONNX Runtime on the CPU; "auto" does so where the checkpoint recommends it.

    `size` is the short side photos are *processed* at (0 = native); drawings come back at the photo's size,
    or with a short side of `output_size`. `max_pixels` is where tiling starts (at the processing size);
    `refuse_above_pixels` is where photos are refused (at the processing or output size, whichever is larger).
    """

    _warned_no_onnx = False

    def __init__(
        self,
        model: nn.Module,
        config: dict[str, Any] | None = None,
        *,
        size: int | None = None,
        max_pixels: int | None = None,
        tile_overlap: int = DEFAULT_TILE_OVERLAP,
        batch_size: int = 4,
        device: str | torch.device = "auto",
        half: bool = False,
        channels_last: bool | None = None,
        backend: str = "auto",
        invert: bool = False,
        threshold: float | None = None,
        line_weight: int = 0,
        output_size: int | None = None,
        refuse_above_pixels: int = DEFAULT_REFUSE_PIXELS,
        thin: bool = False,
        min_stroke: int = 0,
        stroke_width: float | None = None,
        svg_tolerance: float = 1.0,
    ) -> None:
        if size is None:  # the checkpoint's own recommendation (the scale it was trained at), else the default
            size = int((config or {}).get("inference", {}).get("size", DEFAULT_SIZE))
        size = _check_int("size (0 = native resolution)", size, 0, MAX_SIZE)
        if max_pixels is not None:
            max_pixels = _check_int("max_pixels", max_pixels, MIN_SIDE * MIN_SIDE)
        tile_overlap = _check_int("tile_overlap", tile_overlap, 0)
        batch_size = _check_int("batch_size", batch_size, 1)
        line_weight = _check_int("line_weight", line_weight, -MAX_LINE_WEIGHT, MAX_LINE_WEIGHT)
        if output_size is not None:
            output_size = _check_int("output_size", output_size, 1, MAX_SIZE)
        self.refuse_above_pixels = _check_int("refuse_above_pixels", refuse_above_pixels, 1)
        if threshold is not None and not (isinstance(threshold, (int, float)) and 0.0 <= threshold <= 1.0):
            raise UsageError(f"threshold must be a number in [0, 1], got {threshold!r}")
        if backend not in BACKENDS:
            raise UsageError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
        self.min_stroke = _check_int("min_stroke", min_stroke, 0)
        for name, value in (("stroke_width", stroke_width), ("svg_tolerance", svg_tolerance)):
            if value is not None and not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number of pixels, got {value!r}")
        if stroke_width is not None and line_weight:
            raise UsageError("stroke_width and line_weight both set the pen: give one of them")
        if thin and line_weight:
            raise UsageError("line_weight does not apply to thinned strokes (thin): set their pen with stroke_width")
        self.thin, self.stroke_width, self.svg_tolerance = bool(thin), stroke_width, float(svg_tolerance)
        self.model = model.eval().requires_grad_(False)
        self.config = dict(config or {})
        self.size, self.batch_size, self.output_size = size, batch_size, output_size
        self._max_pixels = max_pixels
        #: Input H and W must be multiples of this: the model's own `size_multiple` (1 if it names none).
        self.size_multiple = size_multiple(model)
        self.tile_overlap = max(self.size_multiple, _round_down(tile_overlap, self.size_multiple))
        self.half, self.channels_last, self.backend = half, channels_last, backend
        self._onnx = None
        self.invert, self.threshold, self.line_weight = invert, threshold, line_weight
        if self.thin or self.stroke_width is not None:
            self.line_thresholds()
        self._norm_order: list[nn.Module] | None = None
        self.device = torch.device("cpu")
        self.to(device)

    # ----------------------------------------------------------------------------------------- public API

    def to(self, device: str | torch.device) -> "Converter":
        """Move the generator to `device` ("auto", "cpu", "cuda", "cuda:1", "mps"); returns self."""
        device = resolve_device(device)
        if self.half and device.type != "cuda":
            raise UsageError(f"half precision needs a CUDA device, not {device}")
        self.model.to(device=device, dtype=torch.float16 if self.half else torch.float32)
        use_cl = self.channels_last
        if use_cl is None:  # the checkpoint's recommendation (depthwise convolutions run faster so on CPU too)
            use_cl = self.config.get("inference", {}).get("channels_last", False) or device.type == "cuda"
        self.model.to(memory_format=torch.channels_last if use_cl else torch.contiguous_format)
        self._use_channels_last = use_cl
        self.device = device
        self._onnx = self._onnx_runner(device)
        if self._max_pixels is not None:
            self.max_pixels = self._max_pixels
        else:  # ONNX Runtime keeps the buffers of the largest input it ran: smaller tiles keep its memory down
            self.max_pixels = ONNX_MAX_PIXELS if self._onnx is not None else DEFAULT_MAX_PIXELS
        return self

    def _onnx_runner(self, device: torch.device):
        """An ONNX Runtime runner when the backend asks for one (explicitly, or "auto" with a checkpoint that
        recommends it on CPU and onnxruntime installed), else None (PyTorch)."""
        import importlib.util

        backend = self.backend
        if backend == "auto":
            recommended = self.config.get("inference", {}).get("cpu_backend", "torch")
            if device.type != "cpu" or recommended != "onnxruntime" or self.half:
                return None
            if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnxscript") is None:
                if not Converter._warned_no_onnx:
                    print("note: this checkpoint runs faster on CPU through ONNX Runtime: "
                          "pip install 'linedraw[onnx]'; using PyTorch", file=sys.stderr)
                    Converter._warned_no_onnx = True
                return None
            backend = "onnxruntime"
        if backend == "torch":
            return None
        if device.type != "cpu" or self.half:
            raise UsageError(f"the onnxruntime backend runs on the CPU in float32, not on {device}"
                             + (" in half precision" if self.half else ""))
        from linedraw.export import OnnxRunner

        try:
            return OnnxRunner(self.model)
        except Exception as exc:  # the exporter raises many kinds; say which and what to do
            message = f"could not run this model through ONNX Runtime ({type(exc).__name__}: {str(exc)[:200]})"
            if self.backend == "auto":
                print(f"note: {message}; using PyTorch", file=sys.stderr)
                return None
            raise UsageError(f"{message}; use the torch backend") from exc

    def check_photo(self, height: int, width: int) -> None:
        """Raise `PhotoSizeError` unless a `height` x `width` photo can be converted with these settings.

        Cheap (no pixels needed): batch jobs call it right after reading a file, before queueing any work.
        """
        if min(height, width) < 1:
            raise PhotoSizeError(f"photo is {width}x{height}: it has no pixels")
        aspect = max(height, width) / min(height, width)
        if self.size and aspect > MAX_ASPECT:
            raise PhotoSizeError(
                f"photo is {width}x{height} (aspect ratio {aspect:.0f}:1), over the limit of {MAX_ASPECT}:1 for "
                f"processing at size={self.size}; crop it, or convert it at native resolution (size=0)"
            )
        for what, target in (("processed", self.size), ("written", self.output_size)):
            if target is None:
                continue
            h, w = _processing_shape(height, width, target)
            if what == "processed":  # the network sees the padded image (a 1-px strip becomes MIN_SIDE rows)
                h, w = _padded_shape(h, w, self.size_multiple)
            if h * w > self.refuse_above_pixels:
                option = "size" if what == "processed" else "output_size"
                raise PhotoSizeError(
                    f"photo is {width}x{height}: it would be {what} at {w}x{h} = {h * w} pixels ({option}="
                    f"{target}), over refuse_above_pixels={self.refuse_above_pixels}; lower {option}, or raise "
                    "refuse_above_pixels for trusted files"
                )

    def __call__(self, image: Image.Image) -> Image.Image:
        """Convert one photo to a drawing ("L" mode, same size as the photo)."""
        return self.convert([image])[0]

    def batch(self, images: Iterable[Image.Image]) -> Iterator[Image.Image]:
        """Convert a stream of photos `batch_size` at a time, yielding drawings in input order."""
        chunk: list[Image.Image] = []
        for image in images:
            chunk.append(image)
            if len(chunk) == self.batch_size:
                yield from self.convert(chunk)
                chunk = []
        if chunk:
            yield from self.convert(chunk)

    def convert(self, images: Sequence[Image.Image | torch.Tensor]) -> list[Image.Image]:
        """Convert a list of photos (PIL images of any mode, or (3, H, W) uint8/[0, 1] tensors) to "L" drawings.

        Photos of equal shape share forward passes.
        """
        photos = [image if isinstance(image, torch.Tensor) else pil_to_uint8(image) for image in images]
        drawings = self.convert_tensors(photos)
        return [_tensor_to_pil(d) for d in drawings]

    def to_svg(self, images: Sequence[Image.Image | torch.Tensor]) -> list[str]:
        """Photos -> SVG documents of their drawings' centre lines, sized like the photos (or `output_size`),
        drawn with a pen of `stroke_width` px (default 1) and simplified to `svg_tolerance` px."""
        from linedraw.lineart import thin
        from linedraw.vector import check_svg_options, to_svg

        check_svg_options(invert=self.invert, line_weight=self.line_weight)
        photos = [image if isinstance(image, torch.Tensor) else pil_to_uint8(image) for image in images]
        out = []
        for drawing, photo in zip(self.convert_tensors(photos, raw=True), photos):
            height, width = self._output_shape(tuple(photo.shape[-2:]))
            threshold, weak = self.line_thresholds()
            skeleton = thin(drawing[0].cpu().numpy(), threshold, self.min_stroke, weak)
            out.append(to_svg(skeleton, (width, height), self.stroke_width or 1.0, self.svg_tolerance))
        return out

    @torch.inference_mode()
    def convert_tensors(self, photos: Sequence[torch.Tensor], raw: bool = False) -> list[torch.Tensor]:
        """(3, H, W) photos (float in [0, 1] or uint8) -> (1, H, W) float drawings on the converter's device.

        `raw=True` returns the network's drawings at the processing size, before `finish` (for smoothing them
        over video frames, say)."""
        prepared = [self._prepare(p) for p in photos]
        outputs: list[torch.Tensor | None] = [None] * len(prepared)
        groups: dict[tuple[int, int], list[int]] = {}
        for index, x in enumerate(prepared):
            if x.shape[-2] * x.shape[-1] > self.max_pixels:
                outputs[index] = self._run_tiled(x)
            else:
                groups.setdefault(_padded_shape(*x.shape[-2:], self.size_multiple), []).append(index)
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                batch = torch.stack([_pad(prepared[i], self.size_multiple) for i in chunk])
                result = self._forward(batch)
                for i, drawing in zip(chunk, result):
                    outputs[i] = drawing[:, : prepared[i].shape[-2], : prepared[i].shape[-1]]
        if raw:
            return outputs
        return [self.finish(out, tuple(photo.shape[-2:])) for out, photo in zip(outputs, photos)]

    # ----------------------------------------------------------------------------------------- steps

    def _prepare(self, photo: torch.Tensor) -> torch.Tensor:
        """To float [0, 1] on the device, resized so the short side is `size` (keeping the aspect ratio)."""
        if photo.ndim != 3 or photo.shape[0] != 3:
            raise UsageError(f"expected a (3, H, W) photo, got shape {tuple(photo.shape)}")
        self.check_photo(*photo.shape[-2:])
        x = photo.to(self.device)
        x = x.float().div_(255.0) if x.dtype == torch.uint8 else x.float()
        target = _processing_shape(*x.shape[-2:], self.size)
        if target != tuple(x.shape[-2:]):
            x = _resize(x, target)
        return x

    def finish(self, drawing: torch.Tensor, photo_shape: tuple[int, int]) -> torch.Tensor:
        """A raw (1, h, w) network drawing -> the finished (1, H, W) drawing for a photo of `photo_shape` (H, W):
        resized to the photo's size (or `output_size`), then the line-art options."""
        drawing = drawing.float()
        shape = self._output_shape(photo_shape)
        if self.thin or self.stroke_width is not None:
            from linedraw.lineart import finish

            threshold, weak = self.line_thresholds()
            image = finish(drawing[0].cpu().numpy(), thin=True, min_stroke=self.min_stroke,
                           stroke_width=self.stroke_width, out_size=(shape[1], shape[0]),
                           threshold=threshold, weak_threshold=weak)
            drawing = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)[None].to(self.device)
            return postprocess(drawing[None], self.invert)[0]
        if self.min_stroke:
            from linedraw.lineart import remove_specks

            cleaned = remove_specks(drawing[0].cpu().numpy(), self.min_stroke)
            drawing = torch.from_numpy(np.ascontiguousarray(cleaned, dtype=np.float32))[None].to(self.device)
        if drawing.shape[-2:] != shape:
            drawing = _resize(drawing, shape)
        drawing = postprocess(drawing[None], self.invert, self.threshold, self.line_weight)[0]
        return drawing.clamp(0.0, 1.0)  # not in place: a raw drawing may be an inference tensor (videos)

    def line_thresholds(self) -> tuple[float, float | None]:
        """(threshold, weak_threshold) for centre lines: `threshold` (default 0.5) must lie strictly between 0
        and 1; the hysteresis' weak threshold applies only above it."""
        from linedraw.lineart import WEAK_THRESHOLD

        threshold = 0.5 if self.threshold is None else self.threshold
        if not 0.0 < threshold < 1.0:
            raise UsageError(f"threshold must be strictly between 0 and 1 for centre lines (thin, stroke_width, "
                             f"svg), got {threshold}")
        return threshold, (WEAK_THRESHOLD if threshold < WEAK_THRESHOLD else None)

    def _output_shape(self, photo_shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the written drawing: the photo's, or scaled so its short side is `output_size`."""
        if self.output_size is not None:
            return _processing_shape(*photo_shape, self.output_size)
        return tuple(photo_shape)

    def _forward(self, batch: torch.Tensor, hooks: bool = False) -> torch.Tensor:
        """Run the generator; `hooks=True` when forward hooks on its modules must run (PyTorch only)."""
        if self._onnx is not None and not hooks:
            return self._onnx(batch).to(self.device)
        if self.half:
            batch = batch.half()
        if self._use_channels_last:
            batch = batch.contiguous(memory_format=torch.channels_last)
        return self.model(batch).float()

    # ----------------------------------------------------------------------------------------- tiling

    def _run_tiled(self, x: torch.Tensor) -> torch.Tensor:
        """Run a (3, H, W) image over `max_pixels` as overlapping tiles with image-wide norm statistics."""
        height, width = x.shape[-2:]
        m = self.size_multiple
        padded = _pad(x, m)
        full_h, full_w = padded.shape[-2:]
        tile_h, tile_w = _tile_shape(full_h, full_w, self.max_pixels, m)
        overlap = min(self.tile_overlap, max(m, _round_down(min(tile_h, tile_w) // 2, m) - m))
        ys, xs = _starts(full_h, tile_h, overlap), _starts(full_w, tile_w, overlap)
        core_y, core_x = _cores(ys, tile_h, full_h, m), _cores(xs, tile_w, full_w, m)
        tiles = [(y, x0, cy, cx) for y, cy in zip(ys, core_y) for x0, cx in zip(xs, core_x)]

        stats = self._tiled_norm_stats(padded, tiles, tile_h, tile_w)
        hooks = bool(stats)
        out = torch.zeros(1, full_h, full_w, device=self.device)
        weight_sum = torch.zeros(1, full_h, full_w, device=self.device)
        handles = [norm.register_forward_hook(_fixed_stats_hook(*stats[norm])) for norm in stats]
        try:
            for start in range(0, len(tiles), self.batch_size):
                chunk = tiles[start : start + self.batch_size]
                batch = torch.stack([padded[:, y : y + tile_h, x0 : x0 + tile_w] for y, x0, _, _ in chunk])
                for (y, x0, _, _), drawing in zip(chunk, self._forward(batch, hooks=hooks)):
                    window = (_window(y, tile_h, ys)[:, None] * _window(x0, tile_w, xs)[None, :]).to(self.device)
                    out[:, y : y + tile_h, x0 : x0 + tile_w] += drawing * window
                    weight_sum[:, y : y + tile_h, x0 : x0 + tile_w] += window
        finally:
            for handle in handles:
                handle.remove()
        return (out / weight_sum)[:, :height, :width]

    def _tiled_norm_stats(
        self, padded: torch.Tensor, tiles: list[tuple], tile_h: int, tile_w: int
    ) -> dict[nn.Module, tuple[torch.Tensor, torch.Tensor]]:
        """Per-channel mean/variance of every instance norm's input over the whole image.

        Norm layers are resolved in execution order: for layer k, every tile is run up to layer k (earlier
        layers already using whole-image statistics) and the moments of its core region are merged.
        """
        stats: dict[nn.Module, tuple[torch.Tensor, torch.Tensor]] = {}
        for norm in self._instance_norms():
            moments: list[tuple[float, torch.Tensor, torch.Tensor]] = []
            for start in range(0, len(tiles), self.batch_size):
                chunk = tiles[start : start + self.batch_size]
                cores = [((cy[0] - y, cy[1] - y), (cx[0] - x0, cx[1] - x0)) for y, x0, cy, cx in chunk]
                handles = [n.register_forward_hook(_fixed_stats_hook(*stats[n])) for n in stats]
                handles.append(norm.register_forward_hook(_measure_hook(cores, (tile_h, tile_w), moments)))
                batch = torch.stack([padded[:, y : y + tile_h, x0 : x0 + tile_w] for y, x0, _, _ in chunk])
                try:
                    self._forward(batch, hooks=True)
                except _StopForward:
                    pass
                finally:
                    for handle in handles:
                        handle.remove()
            stats[norm] = _merge_moments(moments, self.device)
        return stats

    def _instance_norms(self) -> list[nn.Module]:
        """Instance norms that normalise with per-image statistics, in the order the forward pass runs them."""
        if self._norm_order is None:
            order: list[nn.Module] = []
            norms = [
                m for m in self.model.modules()
                if isinstance(m, nn.modules.instancenorm._InstanceNorm) and not m.track_running_stats
            ]
            handles = [m.register_forward_pre_hook(lambda m, _: order.append(m)) for m in norms]
            try:
                dtype = torch.float16 if self.half else torch.float32
                side = _round_up(MIN_SIDE, self.size_multiple)
                self.model(torch.zeros(1, 3, side, side, device=self.device, dtype=dtype))
            finally:
                for handle in handles:
                    handle.remove()
            self._norm_order = list(dict.fromkeys(order))
        return self._norm_order


class _StopForward(Exception):
    """Raised by a measuring hook: the rest of the forward pass is not needed."""


def _measure_hook(cores, tile_shape, moments):
    """Record (count, mean, M2) per channel over each sample's core region, then stop the forward pass."""

    def hook(module, inputs, output):
        x = inputs[0].float()
        scale_y, scale_x = tile_shape[0] // x.shape[-2], tile_shape[1] // x.shape[-1]
        for sample, ((y0, y1), (x0, x1)) in zip(x, cores):
            core = sample[:, y0 // scale_y : y1 // scale_y, x0 // scale_x : x1 // scale_x].flatten(1)
            mean = core.mean(dim=1)
            m2 = (core - mean[:, None]).pow(2).sum(dim=1)
            moments.append((float(core.shape[1]), mean.double().cpu(), m2.double().cpu()))
        raise _StopForward

    return hook


def _merge_moments(moments, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Chan et al.'s parallel merge of per-tile (count, mean, M2) into a population mean and variance."""
    count, mean, m2 = moments[0]
    for n, m, s in moments[1:]:
        delta = m - mean
        total = count + n
        mean = mean + delta * (n / total)
        m2 = m2 + s + delta.pow(2) * (count * n / total)
        count = total
    return mean.float().to(device), (m2 / count).float().to(device)


def _fixed_stats_hook(mean: torch.Tensor, var: torch.Tensor):
    """Replace an instance norm's output by normalisation with the given (whole-image) statistics."""

    def hook(module, inputs, output):
        x = inputs[0]
        y = (x.float() - mean[None, :, None, None]) * torch.rsqrt(var[None, :, None, None] + module.eps)
        if module.affine:
            y = y * module.weight.float()[None, :, None, None] + module.bias.float()[None, :, None, None]
        return y.to(x.dtype)

    return hook


# --------------------------------------------------------------------------------------------- geometry


def _processing_shape(height: int, width: int, size: int) -> tuple[int, int]:
    """(H, W) with the short side scaled to `size` (0 keeps the shape)."""
    if size == 0:
        return height, width
    scale = size / min(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))


def _round_down(n: int, multiple: int) -> int:
    return n // multiple * multiple


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _padded_shape(height: int, width: int, multiple: int) -> tuple[int, int]:
    """(H, W) rounded up to multiples of `multiple`, and to at least `MIN_SIDE`."""
    return _round_up(max(height, MIN_SIDE), multiple), _round_up(max(width, MIN_SIDE), multiple)


def _pad(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Replicate-pad a (C, H, W) image at the bottom/right to `_padded_shape` (works down to 1x1)."""
    height, width = x.shape[-2:]
    target_h, target_w = _padded_shape(height, width, multiple)
    if (target_h, target_w) == (height, width):
        return x
    return F.pad(x[None], (0, target_w - width, 0, target_h - height), mode="replicate")[0]


def _resize(x: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """Antialiased bilinear resize of a (C, H, W) float image."""
    return F.interpolate(x[None], size=shape, mode="bilinear", antialias=True, align_corners=False)[0]


def _tile_shape(height: int, width: int, max_pixels: int, multiple: int) -> tuple[int, int]:
    """The largest tile (multiples of `multiple`, within the image) of at most `max_pixels`, as square as possible."""
    smallest = _round_up(MIN_SIDE, multiple)
    tile_h = min(height, max(smallest, _round_down(math.isqrt(max_pixels), multiple)))
    tile_w = min(width, max(smallest, _round_down(max_pixels // tile_h, multiple)))
    if tile_w == width and tile_h < height:  # narrow image: spend the budget on height instead
        tile_h = min(height, max(smallest, _round_down(max_pixels // tile_w, multiple)))
    return tile_h, tile_w


def _starts(total: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one axis: stride `tile - overlap`, the last tile flush with the end."""
    if tile >= total:
        return [0]
    stride = tile - overlap
    starts = list(range(0, total - tile, stride))
    return starts + [total - tile]


def _cores(starts: list[int], tile: int, total: int, multiple: int) -> list[tuple[int, int]]:
    """Split [0, total) among the tiles at the middle of each overlap (multiples of `multiple`), one core per tile."""
    bounds = [0]
    for current, following in zip(starts, starts[1:]):
        middle = _round_down((following + current + tile) // 2, multiple)
        bounds.append(min(max(middle, following), current + tile))
    bounds.append(total)
    return list(zip(bounds, bounds[1:]))


def _window(start: int, tile: int, starts: list[int]) -> torch.Tensor:
    """1-D blending weight of one tile: 1 in the middle, raised-cosine ramps over the overlaps with neighbours."""
    weight = torch.ones(tile, dtype=torch.float64)
    index = starts.index(start)
    ramp_positions = torch.arange(tile, dtype=torch.float64) + 0.5
    if index > 0:
        length = starts[index - 1] + tile - start
        ramp = torch.sin(0.5 * math.pi * (ramp_positions[:length] / length)).pow(2)
        weight[:length] = torch.minimum(weight[:length], ramp)
    if index < len(starts) - 1:
        length = start + tile - starts[index + 1]
        ramp = torch.sin(0.5 * math.pi * (ramp_positions[:length] / length)).pow(2).flip(0)
        weight[tile - length :] = torch.minimum(weight[tile - length :], ramp)
    return weight.float()


def pil_to_uint8(image: Image.Image) -> torch.Tensor:
    """PIL photo -> (3, H, W) uint8 tensor (cheap to copy to a GPU; the converter scales it to [0, 1])."""
    if image.mode != "RGB":
        image = normalize_mode(image, "RGB")
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def _tensor_to_pil(drawing: torch.Tensor) -> Image.Image:
    array = drawing.mul(255.0).round_().to(torch.uint8).cpu().numpy()[0]
    return Image.fromarray(array, mode="L")
