"""Video in, line-art video out, through PyAV (the FFmpeg libraries bundled in its wheels).

`convert_video(converter_fn, src, dst, temporal=..., batch_size=...)` decodes `src` frame by frame, runs
`converter_fn` on batches of frames (e.g. `Converter.convert_tensors`), optionally smooths the drawings over time,
and encodes `dst` at the same frame rate and size: H.264 (libx264) in .mp4/.m4v/.mov/.mkv/.avi where the
bundled FFmpeg has it, else MPEG-4 part 2; VP9 in .webm. Frames go through the network in batches, progress is
shown per frame (tqdm), and `dst` is written atomically, so a failed or interrupted conversion leaves no
partial file.

Temporal smoothing is an exponential moving average of the network's output, `out_t = temporal * out_{t-1} +
(1 - temporal) * y_t`: a network run frame by frame flickers (lines appear and vanish between frames), and the
average trades that flicker for a little lag on moving lines.

A file FFmpeg cannot read (corrupt, truncated, no video stream) raises `VideoError` naming it, an `ImageError`
so that a batch of files reports it in one line and goes on. PyAV comes with the `video` extra
(`pip install 'linedraw[video]'`). Audio is not carried over.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch

from linedraw.errors import MissingDependencyError, MissingFileError, UsageError
from linedraw.images import ImageError, PathLike, display_path, write_atomic_path

#: File extensions taken for videos (inputs are decoded by content; these only route files to this module).
VIDEO_EXTENSIONS = frozenset(
    {".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".mts",
     ".m2ts", ".3gp", ".ogv"}
)
#: Output extensions and their container formats (the temp file's name says nothing, so the muxer is named).
OUTPUT_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "webm", ".avi": "avi"}

ConverterFn = Callable[[Sequence[torch.Tensor]], Sequence[torch.Tensor]]


class VideoError(ImageError):
    """A video file that cannot be used; `str()` is `"<path>: <reason>"`."""


@dataclass(frozen=True)
class VideoSummary:
    """What `convert_video` wrote: frame count, frame rate, size (W, H) and the encoder used."""

    frames: int
    fps: Fraction
    size: tuple[int, int]
    codec: str


def is_video(path: PathLike) -> bool:
    """True if `path`'s extension is a video container's (`VIDEO_EXTENSIONS`), whatever the case."""
    return os.path.splitext(os.fspath(path))[1].lower() in VIDEO_EXTENSIONS


def convert_video(
    converter_fn: ConverterFn,
    src: PathLike,
    dst: PathLike,
    *,
    temporal: float = 0.0,
    batch_size: int = 4,
    progress: bool = True,
    finish: Callable[[torch.Tensor, tuple[int, int]], Any] | None = None,
) -> VideoSummary:
    """Convert every frame of the video `src` into a drawing and write them as the video `dst`.

    `converter_fn` takes a list of (3, H, W) float RGB frames in [0, 1] and returns (1, h, w) drawings in [0, 1];
    `temporal` in [0, 1) smooths them over time (0 = off, see the module docstring); `finish(drawing, (H, W))`, if
    given, turns each smoothed drawing into the frame of the video's size H x W to write (a PIL image, an (H, W)
    array in [0, 1] or uint8, or a tensor), e.g. `Converter.finish` after `Converter.convert_tensors(frames,
    raw=True)`; without it the drawings must already be H x W. Raises `VideoError` naming a file FFmpeg cannot use.
    """
    if not (isinstance(temporal, (int, float)) and 0.0 <= temporal < 1.0):
        raise UsageError(f"temporal must be in [0, 1) (0 = no smoothing), got {temporal!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise UsageError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    src, dst = os.fspath(src), os.fspath(dst)
    muxer = OUTPUT_FORMATS.get(os.path.splitext(dst)[1].lower())
    if muxer is None:
        raise UsageError(f"dst {display_path(dst)!r} must end in one of {', '.join(sorted(OUTPUT_FORMATS))}")
    if os.path.exists(src) and os.path.exists(dst) and os.path.samefile(src, dst):
        raise UsageError(f"dst {display_path(dst)!r} is the source video; write the drawing to another file")
    av = _av()
    codec = _encoder(av, muxer)
    from tqdm.auto import tqdm

    summary: dict[str, Any] = {}

    def write(tmp: str) -> None:
        with _open_input(av, src) as (container, stream):
            fps = stream.average_rate or stream.guessed_rate or stream.base_rate
            if not fps:
                raise VideoError(src, "cannot tell its frame rate")
            fps = Fraction(fps)
            width, height = stream.codec_context.width, stream.codec_context.height
            bar = tqdm(total=stream.frames or None, unit="frame", desc=os.path.basename(src), disable=not progress)
            try:
                with _open_output(av, tmp, dst, muxer) as output:
                    out = output.add_stream(codec, rate=fps)
                    out.width, out.height = width + width % 2, height + height % 2  # 4:2:0 needs even sizes
                    out.pix_fmt = "yuv420p"
                    count = 0
                    previous: torch.Tensor | None = None
                    for batch in _batches(_decode(av, container, stream, src), batch_size):
                        drawings = converter_fn([_to_tensor(frame) for frame in batch])
                        for drawing in drawings:
                            drawing = drawing.float()
                            if temporal and previous is not None:
                                drawing = previous.mul(temporal).add_(drawing, alpha=1.0 - temporal)
                            previous = drawing
                            grey = _to_grey(finish(drawing, (height, width)) if finish is not None else drawing,
                                            out.width, out.height)
                            frame = av.VideoFrame.from_ndarray(grey, format="gray")
                            _mux(av, output, out.encode(frame), dst)
                            count += 1
                            bar.update(1)
                    _mux(av, output, out.encode(None), dst)
            finally:
                bar.close()
            if not count:
                raise VideoError(src, "has no frames")
            summary.update(frames=count, fps=fps, size=(out.width, out.height), codec=codec)

    write_atomic_path(dst, write)
    return VideoSummary(**summary)


def read_frames(path: PathLike) -> Iterator[np.ndarray]:
    """The frames of the video `path` as (H, W, 3) uint8 RGB arrays, in order; `VideoError` if unreadable."""
    av = _av()
    path = os.fspath(path)
    with _open_input(av, path) as (container, stream):
        yield from _decode(av, container, stream, path)


def mean_frame_difference(path: PathLike) -> float:
    """Flicker: the mean absolute difference, in [0, 1] of grey level, between consecutive frames of a video."""
    total, count, previous = 0.0, 0, None
    for frame in read_frames(path):
        grey = frame.astype(np.float32).mean(axis=2) / 255.0
        if previous is not None:
            total += float(np.abs(grey - previous).mean())
            count += 1
        previous = grey
    return total / count if count else 0.0


# ----------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _open_input(av, path: str):
    """(container, first video stream) of `path`, closed after; FFmpeg's refusals become a VideoError."""
    if not os.path.isfile(path):
        raise MissingFileError(f"{display_path(path)}: no such video file")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"not a video FFmpeg can read ({_reason(exc)})") from None
    try:
        if not container.streams.video:
            raise VideoError(path, "has no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        yield container, stream
    finally:
        container.close()


@contextlib.contextmanager
def _open_output(av, tmp: str, dst: str, muxer: str):
    try:
        output = av.open(tmp, mode="w", format=muxer)
    except av.error.FFmpegError as exc:
        raise VideoError(dst, f"cannot write ({_reason(exc)})") from None
    try:
        yield output
    finally:
        output.close()


def _decode(av, container, stream, path: str) -> Iterator[np.ndarray]:
    index = 0
    try:
        for frame in container.decode(stream):
            yield frame.to_ndarray(format="rgb24")
            index += 1
    except av.error.FFmpegError as exc:
        raise VideoError(path, f"cannot decode frame {index} ({_reason(exc)})") from None


def _mux(av, output, packets, dst: str) -> None:
    try:
        for packet in packets:
            output.mux(packet)
    except av.error.FFmpegError as exc:
        raise VideoError(dst, f"cannot encode ({_reason(exc)})") from None


def _batches(frames: Iterator[np.ndarray], size: int) -> Iterator[list[np.ndarray]]:
    batch: list[np.ndarray] = []
    for frame in frames:
        batch.append(frame)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _to_tensor(frame: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(frame)).permute(2, 0, 1).float().div_(255.0)


def _to_grey(drawing: Any, width: int, height: int) -> np.ndarray:
    """A drawing (tensor, array or PIL) as an (height, width) uint8 frame; the odd last row/column an encoder
    needs is the drawing's own last one repeated."""
    from linedraw.lineart import as_drawing

    if isinstance(drawing, torch.Tensor):
        drawing = drawing.detach().cpu()
    grey = np.rint(as_drawing(drawing) * 255.0).astype(np.uint8)
    pad_h, pad_w = height - grey.shape[0], width - grey.shape[1]
    if pad_h < 0 or pad_w < 0 or pad_h > 1 or pad_w > 1:
        raise UsageError(f"the drawings must have the video's size, got {grey.shape[1]}x{grey.shape[0]} "
                         f"for {width}x{height}")
    if pad_h or pad_w:
        grey = np.pad(grey, ((0, pad_h), (0, pad_w)), mode="edge")
    return np.ascontiguousarray(grey)


def _encoder(av, muxer: str) -> str:
    """The first encoder of the container's list that the bundled FFmpeg has."""
    candidates = ("libvpx-vp9", "libvpx") if muxer == "webm" else ("libx264", "mpeg4")
    for name in candidates:
        try:
            av.codec.Codec(name, "w")
        except (av.codec.codec.UnknownCodecError, av.error.FFmpegError):  # not in this build
            continue
        return name
    raise MissingDependencyError(f"this PyAV build has none of the encoders {', '.join(candidates)} "
                                 f"for .{muxer} output; write .mp4 or install another PyAV wheel")


def _reason(exc: Exception) -> str:
    """FFmpeg's own words, without the file name PyAV appends."""
    return getattr(exc, "strerror", None) or str(exc)


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError("video conversion needs PyAV: pip install 'linedraw[video]'") from None
    return av
