"""Checkpoints: safetensors + JSON roundtrip rebuilds the right architecture from every kind of reference."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from linedraw.checkpoint import CheckpointError, list_checkpoints, load_generator, publish_step_dir, save_generator
from linedraw.models import create_model

TINY = {"model": "resnet_generator", "kwargs": {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}}


def _tiny():
    return create_model(TINY["model"], **TINY["kwargs"]).eval()


def test_roundtrip_rebuilds_architecture_and_weights(tmp_path):
    model = _tiny()
    weights = save_generator(model, tmp_path / "mine", {**TINY, "step": 7})
    assert weights == tmp_path / "mine.safetensors"
    config = json.loads((tmp_path / "mine.json").read_text())
    assert config["model"] == "resnet_generator" and config["kwargs"]["ngf"] == 8 and config["step"] == 7
    assert "linedraw_version" in config
    x = torch.rand(1, 3, 16, 20)
    for reference in (weights, tmp_path / "mine.json", str(weights)):
        loaded, loaded_config = load_generator(reference)
        assert not loaded.training
        assert loaded_config["step"] == 7
        torch.testing.assert_close(loaded(x), model(x))


def test_config_embedded_in_safetensors_is_enough(tmp_path):
    model = _tiny()
    save_generator(model, tmp_path / "solo.safetensors", TINY)
    (tmp_path / "solo.json").unlink()
    loaded, config = load_generator(tmp_path / "solo.safetensors")
    assert config["kwargs"]["n_blocks"] == 1
    x = torch.rand(1, 3, 8, 8)
    torch.testing.assert_close(loaded(x), model(x))


def test_half_storage_loads_as_float32(tmp_path):
    model = _tiny()
    weights = save_generator(model, tmp_path / "half", TINY, half=True)
    full = save_generator(model, tmp_path / "full", TINY)
    assert weights.stat().st_size < 0.6 * full.stat().st_size
    loaded, config = load_generator(weights)
    assert config["dtype"] == "float16"
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    x = torch.rand(1, 3, 16, 16)
    torch.testing.assert_close(loaded(x), model(x), atol=5e-3, rtol=0)


def test_training_output_dir_uses_latest(tmp_path):
    old, new = _tiny(), _tiny()
    with torch.no_grad():
        for p in new.parameters():
            p.add_(0.1)
    save_generator(old, tmp_path / "checkpoints" / "step_00000010" / "G_A", TINY)
    save_generator(new, tmp_path / "checkpoints" / "step_00000020" / "G_A", TINY)
    (tmp_path / "checkpoints" / "latest").write_text("step_00000020\n")
    x = torch.rand(1, 3, 12, 12)
    loaded, _ = load_generator(tmp_path)
    torch.testing.assert_close(loaded(x), new(x))
    (tmp_path / "checkpoints" / "latest").write_text("step_00000010\n")
    torch.testing.assert_close(load_generator(tmp_path)[0](x), old(x))
    torch.testing.assert_close(load_generator(tmp_path / "checkpoints" / "step_00000020")[0](x), new(x))


def test_publish_step_dir_moves_latest_and_keeps_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    (root / "step_00000099.tmp").mkdir(parents=True)  # an interrupted save: never latest, never pruned
    for step in (10, 20, 30):
        save_generator(_tiny(), root / f"step_{step:08d}.tmp" / "G_A", TINY)
        final = publish_step_dir(root, f"step_{step:08d}", keep=2)
        assert final == root / f"step_{step:08d}" and (final / "G_A.safetensors").is_file()
        assert (root / "latest").read_text().strip() == f"step_{step:08d}"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000020", "step_00000030", "step_00000099.tmp"]
    load_generator(tmp_path)  # a training output dir resolves through latest


def test_shipped_names_from_env_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEDRAW_CHECKPOINTS", str(tmp_path))
    save_generator(_tiny(), tmp_path / "sketchy", TINY)
    (tmp_path / "sketchy.md").write_text("# Sketchy style\nmore\n")
    names = {c.name: c for c in list_checkpoints()}
    assert names["sketchy"].card == tmp_path / "sketchy.md"
    model, config = load_generator("sketchy")
    assert config["model"] == "resnet_generator"


def test_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("LINEDRAW_CHECKPOINTS", str(tmp_path))
    with pytest.raises(CheckpointError, match=r"no shipped checkpoint named 'nope'.*path of a .safetensors file"):
        load_generator("nope")
    with pytest.raises(CheckpointError, match="not found"):
        load_generator(tmp_path / "missing.safetensors")
    with pytest.raises(CheckpointError, match="not a checkpoint directory"):
        load_generator(tmp_path)
    # Weights that do not fit the configured architecture.
    save_generator(_tiny(), tmp_path / "bad", TINY)
    (tmp_path / "bad.json").write_text(json.dumps({**TINY, "kwargs": {**TINY["kwargs"], "ngf": 16}}))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_generator(tmp_path / "bad.safetensors")
    # A weights file without any config.
    save_file({"w": torch.zeros(1)}, str(tmp_path / "raw.safetensors"))
    with pytest.raises(CheckpointError, match="no raw.json"):
        load_generator(tmp_path / "raw.safetensors")
    with pytest.raises(ValueError, match="'model'"):
        save_generator(_tiny(), tmp_path / "x", {"kwargs": {}})
