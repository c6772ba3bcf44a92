"""linedraw.pipeline: the robust folder loop as a Python API (the CLI is a thin wrapper over it)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.checkpoint import load_generator, save_generator
from linedraw.convert import Converter
from linedraw.errors import UsageError
from linedraw.models import create_model
from linedraw.pipeline import ConversionInterrupted, Summary, Task, convert_files, plan_outputs

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


@pytest.fixture(scope="module")
def converter(tmp_path_factory) -> Converter:
    torch.manual_seed(0)
    path = save_generator(create_model(TINY["model"], **TINY["kwargs"]), tmp_path_factory.mktemp("ckpt") / "t", TINY)
    return Converter(load_generator(path)[0], size=16, batch_size=1, device="cpu")


def _photos(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize((40, 30)).save(folder / f"p{i}.png")


def test_convert_files_reports_a_summary_and_writes_the_errors_csv(tmp_path, converter):
    _photos(tmp_path / "in", 3)
    (tmp_path / "in" / "bad.png").write_text("not an image")
    tasks = plan_outputs([tmp_path / "in"], tmp_path / "out", format="jpg")
    assert [t.target.name for t in tasks] == ["bad.jpg", "p0.jpg", "p1.jpg", "p2.jpg"]
    seen = []
    summary = convert_files(converter, tasks, workers=1, errors=tmp_path / "errors.csv",
                            on_error=lambda task, reason: seen.append((task.source.name, reason)))
    assert isinstance(summary, Summary)
    assert (summary.converted, summary.skipped, summary.failed, summary.left) == (3, 0, 1, 0)
    assert seen and seen[0][0] == "bad.png" and "not an image" in seen[0][1]
    assert Image.open(tmp_path / "out" / "p0.jpg").size == (40, 30)
    with open(tmp_path / "errors.csv", newline="") as handle:
        assert [row["path"] for row in csv.DictReader(handle)] == [str(tmp_path / "in" / "bad.png")]
    again = convert_files(converter, tasks[1:], skip_existing=True, workers=0)
    assert (again.converted, again.skipped) == (0, 3)


def test_shards_split_the_tasks_before_skipping(tmp_path, converter):
    _photos(tmp_path / "in", 5)
    tasks = plan_outputs([tmp_path / "in"], tmp_path / "out")
    done = [convert_files(converter, tasks, shard=(i, 2), workers=0).converted for i in range(2)]
    assert done == [3, 2] and len(list((tmp_path / "out").glob("*.png"))) == 5


def test_interruption_carries_the_summary_so_far(tmp_path, converter, monkeypatch):
    _photos(tmp_path / "in", 3)
    real, calls = Converter.convert, []

    def interrupted(self, images):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(Converter, "convert", interrupted)
    with pytest.raises(ConversionInterrupted) as raised:
        convert_files(converter, plan_outputs([tmp_path / "in"], tmp_path / "out"), workers=0)
    assert isinstance(raised.value, KeyboardInterrupt)
    assert (raised.value.summary.converted, raised.value.summary.left) == (1, 2)
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["p0.png"]


def test_bad_arguments_name_themselves(tmp_path, converter):
    tasks = [Task(tmp_path / "a.png", tmp_path / "out" / "a.png")]
    with pytest.raises(UsageError, match="workers"):
        convert_files(converter, tasks, workers=-1)
    with pytest.raises(UsageError, match="shard"):
        convert_files(converter, tasks, shard=(2, 2))
    with pytest.raises(UsageError, match="format"):
        plan_outputs([tmp_path], tmp_path / "out", format="gif")
    with pytest.raises(UsageError, match="outdir"):
        plan_outputs([tmp_path], tmp_path)
