"""Video conversion: frame count, rate and size survive the round trip, temporal smoothing lowers flicker, and an
unreadable file is one VideoError naming it, with nothing half-written left behind."""
from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

av = pytest.importorskip("av", reason="video conversion needs PyAV (pip install 'linedraw[video]')")

from linedraw import video  # noqa: E402
from linedraw.errors import LinedrawError, MissingFileError, UsageError  # noqa: E402
from linedraw.images import ImageError  # noqa: E402


def _clip(path: Path, frames: int = 12, size: tuple[int, int] = (96, 64), fps: Fraction = Fraction(24),
          noise: float = 25.0, seed: int = 0) -> Path:
    """A short clip: a dark square moving right on a light page, with fresh per-frame noise (nearly lossless)."""
    rng = np.random.default_rng(seed)
    container = av.open(str(path), "w")
    stream = container.add_stream(video._encoder(av, "mp4"), rate=fps)
    stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
    if stream.codec_context.name == "libx264":
        stream.options = {"crf": "5"}
    for i in range(frames):
        image = np.full((size[1], size[0]), 230.0)
        image[20:40, 8 + 2 * i : 24 + 2 * i] = 30.0
        image += rng.normal(0.0, noise, image.shape)
        rgb = np.repeat(np.clip(image, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    return path


def _grey(frames):
    """A stand-in for `Converter.convert_tensors`: the frame's grey level as the drawing."""
    return [frame.mean(0, keepdim=True) for frame in frames]


def _probe(path: Path) -> tuple[int, Fraction, int, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        count = sum(1 for _ in container.decode(stream))
        return count, Fraction(stream.average_rate), stream.codec_context.width, stream.codec_context.height


def test_is_video_by_extension():
    assert video.is_video("a/b/clip.MP4") and video.is_video("x.webm") and video.is_video(Path("y.mkv"))
    assert not video.is_video("photo.png") and not video.is_video("anim.gif") and not video.is_video("noext")


@pytest.mark.parametrize("suffix, fps", [
    (".mp4", Fraction(24)), (".mkv", Fraction(30000, 1001)), (".webm", Fraction(25)),
])
def test_round_trip_keeps_frame_count_rate_and_size(tmp_path, suffix, fps):
    src = _clip(tmp_path / "in.mp4", frames=10, fps=fps)
    summary = video.convert_video(_grey, src, tmp_path / f"out{suffix}", progress=False)
    assert (summary.frames, summary.fps, summary.size) == (10, fps, (96, 64))
    assert summary.codec == ("libvpx-vp9" if suffix == ".webm" else "libx264")
    assert _probe(tmp_path / f"out{suffix}") == (10, fps, 96, 64)
    frame = next(video.read_frames(tmp_path / f"out{suffix}"))
    assert frame[30, 15].mean() < 90 and frame[5, 80].mean() > 170  # the square is dark, the page light


def test_odd_sizes_are_padded_to_the_even_size_the_encoder_needs(tmp_path):
    src = tmp_path / "odd.mkv"
    container = av.open(str(src), "w")
    stream = container.add_stream("ffv1", rate=10)  # lossless, and takes odd sizes
    stream.width, stream.height, stream.pix_fmt = 33, 21, "yuv444p"
    for _ in range(3):
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((21, 33, 3), np.uint8), format="rgb24")):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    summary = video.convert_video(_grey, src, tmp_path / "out.mp4", progress=False)
    assert summary.size == (34, 22) and _probe(tmp_path / "out.mp4") == (3, Fraction(10), 34, 22)


def test_temporal_smoothing_lowers_flicker(tmp_path):
    src = _clip(tmp_path / "in.mp4", frames=16)
    plain = video.convert_video(_grey, src, tmp_path / "plain.mp4", progress=False)
    smooth = video.convert_video(_grey, src, tmp_path / "smooth.mp4", temporal=0.6, progress=False)
    assert plain.frames == smooth.frames == 16
    flicker_plain = video.mean_frame_difference(tmp_path / "plain.mp4")
    flicker_smooth = video.mean_frame_difference(tmp_path / "smooth.mp4")
    assert flicker_smooth < 0.6 * flicker_plain, (flicker_plain, flicker_smooth)


def test_smoothing_is_the_moving_average_of_the_outputs_and_frames_are_batched(tmp_path):
    src = _clip(tmp_path / "in.mp4", frames=7)
    values = iter(np.linspace(0.0, 1.0, 7))
    batches, seen = [], []

    def constant(frames):  # frame t's drawing is the constant v_t
        batches.append(len(frames))
        return [torch.full((1, *frame.shape[1:]), float(next(values))) for frame in frames]

    def finish(drawing, shape):
        assert shape == tuple(drawing.shape[-2:])
        seen.append(float(drawing.mean()))
        return drawing

    video.convert_video(constant, src, tmp_path / "out.mp4", temporal=0.5, batch_size=3, finish=finish,
                        progress=False)
    assert batches == [3, 3, 1]
    expected, previous = [], None
    for v in np.linspace(0.0, 1.0, 7):
        previous = v if previous is None else 0.5 * previous + 0.5 * v
        expected.append(previous)
    np.testing.assert_allclose(seen, expected, atol=1e-6)


@pytest.mark.parametrize("make", [
    lambda p: p.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes()),
    lambda p: p.write_bytes(b""),
])
def test_a_corrupt_file_is_one_video_error_naming_it(tmp_path, make):
    src = tmp_path / "broken.mp4"
    make(src)
    with pytest.raises(video.VideoError) as info:
        video.convert_video(_grey, src, tmp_path / "out.mp4", progress=False)
    assert isinstance(info.value, ImageError) and isinstance(info.value, LinedrawError)
    message = str(info.value)
    assert message.startswith(str(src)) and "\n" not in message
    assert os.listdir(tmp_path) == ["broken.mp4"]  # no output, no temp file


def test_a_truncated_file_is_a_video_error(tmp_path):
    data = _clip(tmp_path / "in.mp4").read_bytes()
    src = tmp_path / "cut.mp4"
    src.write_bytes(data[: len(data) // 2])
    with pytest.raises(video.VideoError, match="cut.mp4"):
        video.convert_video(_grey, src, tmp_path / "out.mp4", progress=False)
    assert not (tmp_path / "out.mp4").exists()


def test_a_file_without_video_is_a_video_error(tmp_path):
    src = tmp_path / "sound.mkv"
    container = av.open(str(src), "w")
    stream = container.add_stream("pcm_s16le", rate=8000)
    frame = av.AudioFrame.from_ndarray(np.zeros((1, 800), np.int16), format="s16", layout="mono")
    frame.sample_rate = 8000
    for packet in stream.encode(frame):
        container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    with pytest.raises(video.VideoError, match="no video stream"):
        video.convert_video(_grey, src, tmp_path / "out.mp4", progress=False)


def test_a_failure_midway_leaves_no_output(tmp_path):
    src = _clip(tmp_path / "in.mp4", frames=8)
    calls = []

    def failing(frames):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("out of memory")
        return _grey(frames)

    with pytest.raises(RuntimeError):
        video.convert_video(failing, src, tmp_path / "out.mp4", batch_size=2, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["in.mp4"]


def test_writing_over_the_source_is_refused(tmp_path):
    src = _clip(tmp_path / "in.mp4", frames=2)
    before = src.read_bytes()
    with pytest.raises(UsageError, match="dst"):
        video.convert_video(_grey, src, tmp_path / "." / "in.mp4", progress=False)
    assert src.read_bytes() == before


def test_a_missing_file_names_it(tmp_path):
    with pytest.raises(MissingFileError, match="nope.mp4"):
        video.convert_video(_grey, tmp_path / "nope.mp4", tmp_path / "out.mp4", progress=False)


@pytest.mark.parametrize("kwargs, argument", [
    ({"temporal": 1.0}, "temporal"), ({"temporal": -0.1}, "temporal"), ({"batch_size": 0}, "batch_size"),
    ({"dst": "out.png"}, "dst"),
])
def test_bad_arguments_are_usage_errors_naming_the_argument(tmp_path, kwargs, argument):
    src = _clip(tmp_path / "in.mp4", frames=2)
    dst = tmp_path / kwargs.pop("dst", "out.mp4")
    with pytest.raises(UsageError, match=argument):
        video.convert_video(_grey, src, dst, progress=False, **kwargs)
