"""Distillation: the fast student network, its loss, the resumable `linedraw distill` run, pixel agreement."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import linedraw
from linedraw.checkpoint import load_generator, save_generator
from linedraw.cli import main
from linedraw.convert import Converter
from linedraw.distill import DistillConfig, build_pairs, distill
from linedraw.eval.agreement import drawing_agreement
from linedraw.losses import distillation_loss
from linedraw.models import create_model

STUDENT = {"model": "fast_generator", "kwargs": {"width": 8, "n_blocks": 1, "n_blocks_half": 1}}
TEACHER = STUDENT  # a teacher the student can match exactly, so learning shows within a few dozen steps


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """A random network with a high-contrast output (a random ResNet generator draws pixel noise, not a function a
    tiny student can learn in a test)."""
    torch.manual_seed(1)
    model = create_model(TEACHER["model"], **TEACHER["kwargs"])
    with torch.no_grad():
        model.head[0].weight.mul_(10.0)
    return save_generator(model, tmp_path_factory.mktemp("t") / "t", TEACHER)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four smooth random photos (48x64) in a folder."""
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for i in range(4):
        small = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8))
        small.resize((64, 48), Image.BICUBIC).save(folder / f"p{i}.png")
    return folder


def _config(photos: Path, teacher: Path, out: Path, **overrides) -> DistillConfig:
    settings = dict(photos=[str(photos)], output_dir=str(out), teacher=str(teacher), student=STUDENT, sizes=[32],
                    crop=32, batch_size=4, steps=20, lr=5e-3, warmup=2, save_every=10, workers=0, device="cpu")
    return DistillConfig(**{**settings, **overrides})


def test_fast_generator_output_shape_range_and_size_checks():
    model = create_model("fast_generator", width=8, n_blocks=2)
    with torch.no_grad():
        y = model(torch.rand(2, 3, 36, 52))
    assert y.shape == (2, 1, 36, 52)
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.rand(1, 3, 34, 52))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.rand(1, 1, 36, 52))


def test_student_is_much_smaller_than_the_teacher_it_replaces():
    """The shipped student architecture vs the paper generator: the point of distilling is the saving."""
    from linedraw.distill import DEFAULT_STUDENT

    student = create_model(DEFAULT_STUDENT)
    paper = create_model("resnet_generator", ngf=64, n_blocks=3)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(student) * 20 < count(paper)


def test_distillation_loss_is_zero_on_agreement_and_the_edge_term_sees_blur():
    teacher = torch.ones(1, 1, 32, 32)
    teacher[..., 16, 4:28] = 0.0  # one dark line
    blurred = torch.nn.functional.avg_pool2d(teacher, 3, stride=1, padding=1, count_include_pad=False)
    assert float(distillation_loss(teacher.clone(), teacher)) == 0.0
    plain, with_edges = distillation_loss(blurred, teacher, 0.0), distillation_loss(blurred, teacher, 1.0)
    assert float(with_edges) > float(plain) > 0.0
    with pytest.raises(ValueError, match="shape"):
        distillation_loss(teacher, teacher[..., :16])
    # line weighting: a faint copy of the line costs more, a spurious dark pixel on paper costs relatively less
    faint = teacher.clone()
    faint[..., 16, 4:28] = 0.6
    spurious = teacher.clone()
    spurious[..., 8, 4:28] = 0.4
    plain = float(distillation_loss(faint, teacher, 0.0)), float(distillation_loss(spurious, teacher, 0.0))
    weighted = float(distillation_loss(faint, teacher, 0.0, 4.0)), float(distillation_loss(spurious, teacher, 0.0, 4.0))
    assert plain[0] == pytest.approx(plain[1]) and weighted[0] > 2 * weighted[1]


def test_build_pairs_reports_bad_photos_and_keeps_cached_pairs(tmp_path, photos, teacher):
    folder = tmp_path / "photos"
    shutil.copytree(photos, folder)
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    pairs, errors = build_pairs([str(folder)], tmp_path / "run", str(teacher), [32], device="cpu", show_progress=False)
    assert len(pairs) == 4 and len(errors) == 1 and "broken.jpg" in errors[0]
    photo, drawing = pairs[0]
    assert Image.open(photo).size == (43, 32) and Image.open(drawing).size == (43, 32)  # short side 32, aspect kept
    model, _ = load_generator(teacher)  # the cached drawing is the teacher's drawing of the cached photo
    x = torch.from_numpy(np.asarray(Image.open(photo), np.float32) / 255.0).permute(2, 0, 1)
    expected = Converter(model, size=0, device="cpu").convert_tensors([x])[0][0].numpy()
    assert np.abs(np.asarray(Image.open(drawing), np.float32) / 255.0 - expected).max() <= 1 / 255 + 1e-6
    before = drawing.stat().st_mtime_ns
    again, _ = build_pairs([str(folder)], tmp_path / "run", str(teacher), [32], device="cpu", show_progress=False)
    assert len(again) == 4 and drawing.stat().st_mtime_ns == before


def test_tiny_distillation_learns_the_teacher_and_resumes_exactly(tmp_path, photos, teacher):
    config = _config(photos, teacher, tmp_path / "a", steps=60, save_every=30)
    summary = distill(config, show_progress=False)
    assert summary["step"] == 60 and summary["pairs"] == 4

    pairs, _ = build_pairs(config.photos, Path(config.output_dir), config.teacher, [32], show_progress=False, draw=False)
    def mean_loss(model) -> float:
        total = 0.0
        for photo_path, drawing_path in pairs:
            x = torch.from_numpy(np.asarray(Image.open(photo_path), np.float32) / 255.0).permute(2, 0, 1)[None]
            y = torch.from_numpy(np.asarray(Image.open(drawing_path), np.float32) / 255.0)[None, None]
            with torch.no_grad():
                total += float(distillation_loss(model(x[..., :32, :40]), y[..., :32, :40]))
        return total / len(pairs)

    torch.manual_seed(0)
    initial = create_model(STUDENT["model"], **STUDENT["kwargs"])
    trained, saved = load_generator(tmp_path / "a" / "student.safetensors")
    assert saved["distillation"]["steps"] == 60 and saved["inference"]["size"] == 32
    assert mean_loss(trained) < 0.65 * mean_loss(initial)  # 0.54x measured

    # Resume from the step-30 state an interrupted run would have left: the result is the uninterrupted one.
    resumed = tmp_path / "b"
    shutil.copytree(tmp_path / "a", resumed)
    (resumed / "state" / "latest").write_text("step_00000030\n")
    shutil.rmtree(resumed / "state" / "step_00000060")
    (resumed / "student.safetensors").unlink()
    distill(_config(photos, teacher, resumed, steps=60, save_every=30), show_progress=False)
    again, _ = load_generator(resumed / "student.safetensors")
    for (name, p), q in zip(trained.state_dict().items(), again.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_student_checkpoint_converts_through_the_public_api(tmp_path, photos, teacher):
    distill(_config(photos, teacher, tmp_path, steps=2, save_every=2), show_progress=False)
    converter = linedraw.load(str(tmp_path / "student.safetensors"), device="cpu")
    assert converter._use_channels_last  # the student's checkpoint recommends channels-last on CPU too
    drawing = converter(Image.open(photos / "p0.png"))
    assert drawing.mode == "L" and drawing.size == (64, 48)
    tiled = linedraw.load(str(tmp_path / "student.safetensors"), device="cpu", size=0, max_pixels=32 * 32,
                          tile_overlap=16)
    whole = linedraw.load(str(tmp_path / "student.safetensors"), device="cpu", size=0)
    photo = Image.open(photos / "p1.png")
    difference = np.abs(np.asarray(tiled(photo), np.float32) - np.asarray(whole(photo), np.float32)) / 255.0
    assert difference.mean() < 0.02  # no normalisation layers: tiles differ only by zero padding near their edges


def test_converter_channels_last_follows_the_checkpoint_unless_told(teacher):
    model, config = load_generator(teacher)  # saved without an "inference" recommendation
    assert not Converter(model, config, device="cpu")._use_channels_last
    recommended = {**config, "inference": {"channels_last": True}}
    assert Converter(model, recommended, device="cpu")._use_channels_last
    assert not Converter(model, recommended, device="cpu", channels_last=False)._use_channels_last


def test_distill_cli_rejects_bad_options_and_missing_photos(tmp_path, teacher, capsys):
    assert main(["distill", str(tmp_path), "-o", str(tmp_path / "o"), "--student", "{nope"]) == 2
    assert "--student" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["distill", str(empty), "-o", str(tmp_path / "o"), "--teacher", str(teacher), "--device", "cpu"]) == 2
    assert "no images found" in capsys.readouterr().err


def test_drawing_agreement_on_hand_made_drawings():
    a = np.ones((10, 10), np.float32)
    a[5, 2:8] = 0.0  # a 6-pixel line
    b = a.copy()
    assert drawing_agreement(a, b) == {"mae": 0.0, "agreement": 1.0, "line_iou": 1.0}
    b[5, 5:8] = 1.0  # half of the line missing
    scores = drawing_agreement(a, b)
    assert scores["agreement"] == pytest.approx(0.97) and scores["line_iou"] == pytest.approx(0.5)
    assert scores["mae"] == pytest.approx(0.03)
    with pytest.raises(ValueError, match="shape"):
        drawing_agreement(a, b[:5])


def test_eval_agreement_cli_compares_folders(tmp_path, capsys):
    for name, column in (("a", 3), ("b", 4)):
        folder = tmp_path / name
        folder.mkdir()
        image = np.full((8, 8), 255, np.uint8)
        image[:, column] = 0
        Image.fromarray(image).save(folder / "x.png")
    assert main(["eval", "agreement", str(tmp_path / "a"), str(tmp_path / "b"), "--json", str(tmp_path / "s.json")]) == 0
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["count"] == 1 and scores["line_iou"] == 0.0 and scores["agreement"] == pytest.approx(0.75)
    assert main(["eval", "agreement", str(tmp_path / "a"), str(tmp_path / "missing")]) == 2
    assert "missing" in capsys.readouterr().err


class _Payload:
    """Unpickling this creates `marker` (stands in for any code a planted pickle could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_resume_refuses_a_planted_pickle_naming_it(tmp_path, photos, teacher):
    from linedraw.errors import LinedrawError

    out = tmp_path / "run"
    distill(_config(photos, teacher, out, steps=2, save_every=2), show_progress=False)
    state_dir = out / "state" / (out / "state" / "latest").read_text().strip()
    marker = tmp_path / "pwned"
    for name in ("custom_checkpoint_0.pkl", "training.pt"):
        torch.save({"step": _Payload(marker)}, state_dir / name)
    (state_dir / "run.json").unlink(missing_ok=True)  # the accelerate layout: custom_checkpoint_0.pkl is read
    with pytest.raises(LinedrawError, match="custom_checkpoint_0.pkl"):
        distill(_config(photos, teacher, out, steps=4, save_every=2), show_progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("flag, value", [("--steps", "-5"), ("--lr", "fast"), ("--lr", "0"), ("--batch-size", "0")])
def test_distill_cli_checks_numbers_up_front_naming_the_flag(tmp_path, photos, teacher, capsys, flag, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["distill", str(photos), "-o", str(tmp_path / "o"), "--teacher", str(teacher), flag, value])
    assert exit_info.value.code == 2 and flag in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_distill_config_checks_numbers_naming_the_argument(tmp_path, photos, teacher):
    from linedraw.errors import UsageError

    for name, value in (("steps", -5), ("lr", 0.0), ("batch_size", 0), ("crop", 30)):
        with pytest.raises(UsageError, match=name):
            distill(_config(photos, teacher, tmp_path / "o", **{name: value}), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_student_json_that_does_not_parse_is_one_line_naming_the_file(tmp_path, photos, teacher, capsys):
    spec = tmp_path / "student.json"
    spec.write_text('{"model": "fast_generator", ')
    assert main(["distill", str(photos), "-o", str(tmp_path / "o"), "--teacher", str(teacher),
                 "--student", str(spec)]) == 2
    err = capsys.readouterr().err
    assert "student.json" in err and err.count("\n") == 1


@pytest.mark.parametrize("device", [f"cuda:{torch.cuda.device_count() if torch.cuda.is_available() else 1}", "tpu"])
def test_distill_device_goes_through_the_one_resolver(tmp_path, photos, teacher, device):
    """`device` is checked by linedraw.convert.resolve_device, not read as "anything but cpu means accelerate's GPU"."""
    from linedraw.errors import UsageError

    with pytest.raises(UsageError, match="device="):
        distill(_config(photos, teacher, tmp_path / "o", device=device), show_progress=False)
    assert not (tmp_path / "o").exists()


def test_distill_cli_device_defaults_to_auto_and_is_checked(tmp_path, photos, teacher, capsys):
    from linedraw.cli import build_parser

    args = build_parser().parse_args(["distill", str(photos), "-o", str(tmp_path / "o")])
    assert args.device == "auto"
    assert main(["distill", str(photos), "-o", str(tmp_path / "o"), "--teacher", str(teacher),
                 "--device", "nonsense"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: device='nonsense'") and err.count("\n") == 1


def test_build_pairs_draws_through_the_conversion_pipeline(tmp_path, photos, teacher):
    """The teacher's drawings come from linedraw.pipeline's loop: a temp file a killed run left is cleared."""
    import os

    pairs, _ = build_pairs([str(photos)], tmp_path / "run", str(teacher), [32], device="cpu", show_progress=False)
    photo, drawing = pairs[0]
    drawing.unlink()  # as if killed between the photo and its drawing
    stale = drawing.parent / f".{drawing.name}.a1b2c3d4.tmp"
    stale.write_bytes(b"half a png")
    os.utime(stale, (1, 1))
    again, errors = build_pairs([str(photos)], tmp_path / "run", str(teacher), [32], device="cpu",
                                show_progress=False)
    assert len(again) == 4 and not errors and drawing.is_file() and not stale.exists()


def test_student_by_registered_name_and_its_inference_defaults(tmp_path, photos, teacher, capsys):
    """--student takes a registered variant's name (JSON stays accepted); the checkpoint records the name, and the
    CPU recommendation comes from the model class, not from a comparison with "fast_generator"."""
    from linedraw.commands.distill import _student_spec
    from linedraw.distill import DEFAULT_STUDENT

    assert DEFAULT_STUDENT == "fast_generator_w24_b8" and _student_spec(DEFAULT_STUDENT) == DEFAULT_STUDENT
    assert _student_spec(json.dumps(STUDENT)) == STUDENT
    assert main(["distill", str(photos), "-o", str(tmp_path / "bad"), "--student", "fast_generatr"]) == 2
    assert "fast_generator_w24_b8" in capsys.readouterr().err  # the names it knows
    distill(_config(photos, teacher, tmp_path / "run", student=DEFAULT_STUDENT, steps=1, save_every=1),
            show_progress=False)
    _, saved = load_generator(tmp_path / "run" / "student.safetensors")
    assert saved["model"] == DEFAULT_STUDENT and saved["kwargs"] == {}
    assert saved["inference"] == {"size": 32, "channels_last": True, "cpu_backend": "onnxruntime"}
    distill(_config(photos, teacher, tmp_path / "paper", student={"model": "resnet_generator",
                                                                  "kwargs": {"ngf": 4, "n_blocks": 1}},
                    steps=1, save_every=1), show_progress=False)
    assert load_generator(tmp_path / "paper" / "student.safetensors")[1]["inference"] == {"size": 32}


def test_distill_cli_quiet_runs_without_progress_bars(tmp_path, photos, teacher, capsys):
    argv = ["distill", str(photos), "-o", str(tmp_path / "o"), "--teacher", str(teacher), "--student",
            json.dumps(STUDENT), "--sizes", "32", "--crop", "32", "--batch-size", "2", "--steps", "2", "--warmup", "0",
            "--workers", "0", "--device", "cpu"]
    assert main(argv + ["-q"]) == 0
    err = capsys.readouterr().err
    assert "distill:" not in err and "it/s" not in err and "step/s" not in err, f"--quiet showed a bar: {err!r}"
    assert (tmp_path / "o" / "student.safetensors").is_file()
    assert main(argv[:3] + [str(tmp_path / "o2")] + argv[4:]) == 0
    assert "distill:" in capsys.readouterr().err, "without --quiet the run shows its progress bar"
