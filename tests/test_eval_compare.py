"""`linedraw eval compare`: two tiny checkpoints on a BSDS-style folder -> table, edges, study, all offline."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.checkpoint import save_generator
from linedraw.cli import main
from linedraw.models import create_model
from tests.test_eval_clip import tiny_clip  # noqa: F401  (fixture)

pytest.importorskip("pyEdgeEval", reason="pyEdgeEval not installed (pip install 'linedraw[eval]')")

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


def test_compare_two_checkpoints(tiny_clip, tmp_path, capsys):  # noqa: F811
    checkpoints = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        path = save_generator(create_model(TINY["model"], **TINY["kwargs"]), tmp_path / f"ck{seed}" / "model", TINY)
        checkpoints.append(str(path))
    (tmp_path / "set" / "images").mkdir(parents=True)
    (tmp_path / "set" / "groundTruth").mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        photo = Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8))
        photo.save(tmp_path / "set" / "images" / f"{i}.jpg")
        truth = np.zeros((2, 32, 40), dtype=bool)
        truth[:, :, 10 + i] = True
        np.savez(tmp_path / "set" / "groundTruth" / f"{i}.npz", boundaries=truth)

    out = tmp_path / "cmp"
    args = ["eval", "compare", *checkpoints, "--photos", str(tmp_path / "set" / "images"), "-o", str(out),
            "--model", "linedraw-test-tiny", "--pretrained", str(tiny_clip), "--device", "cpu", "--size", "32",
            "--edge-thresholds", "2", "--n", "3", "--quiet"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "ground truth:" in text
    assert "| metric | model-1 | model-2 |" in text
    for label in ("recognizability score (open_clip linedraw-test-tiny", "edges ODS F", "edges AP", "pairs scored"):
        assert label in text
    assert "| pairs scored | 3 | 3 |" in text and "| edge images | 3 | 3 |" in text
    assert (out / "compare.md").read_text().strip() in text
    assert len(list((out / "drawings" / "model-1").glob("*.png"))) == 3
    assert (out / "study" / "index.html").is_file()
    assert len((out / "study" / "trials.csv").read_text().splitlines()) == 1 + 3 + 4
    report = json.loads((out / "compare.json").read_text())
    assert set(report["edges"]) == {"model-1", "model-2"} and report["errors"] == []
