"""Warm start (`warm_start:` in a training config): a fresh run's nets begin from a checkpoint or a run folder."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from linedraw.checkpoint import CheckpointError
from linedraw.config import load_config
from linedraw.training.method import build_models
from linedraw.training.warm_start import warm_start
from tests.test_train import latest_generator, run_train, tiny  # noqa: F401 (fixture)


def _nets(config, *overrides):
    cfg = load_config(config, list(overrides))
    torch.manual_seed(123)  # another init than the source run's
    nets, _ = build_models(cfg, torch.device("cpu"))
    return nets


def test_warm_start_copies_every_fitting_tensor_of_a_run_folder(tiny):
    config, out = tiny
    run_train(config, "optim.max_steps=2")
    source = latest_generator(out)
    step_dir = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    saved = load_file(step_dir / "nets.safetensors")

    nets = _nets(config)
    report = warm_start(nets, str(out))
    assert set(report) == {"G_A", "G_B", "D_A", "D_B", "head", "unet"}
    assert all(copied == total for copied, total in report.values()), report
    for key, tensor in nets["G_A"].state_dict().items():
        assert torch.equal(tensor, source[key].to(tensor.dtype)), key
    for key, tensor in nets["D_B"].state_dict().items():
        assert torch.equal(tensor, saved[f"D_B.{key}"]), key

    # Another upsampling keeps the encoder and residual blocks, and learns its own upsampling layers.
    resized = _nets(config, "model.upsample=resize")
    fresh_up = {k: v.clone() for k, v in resized["G_A"].state_dict().items() if k not in source
                or v.shape != source[k].shape}
    copied, total = warm_start(resized, str(out))["G_A"]
    assert 0 < copied < total and fresh_up
    for key, tensor in resized["G_A"].state_dict().items():
        if key in fresh_up:
            assert torch.equal(tensor, fresh_up[key]), f"{key} does not fit and must keep its init"
        else:
            assert torch.equal(tensor, source[key].to(tensor.dtype)), key


def test_warm_start_from_a_checkpoint_that_fits_nothing_is_an_error(tiny):
    config, _ = tiny
    with pytest.raises(CheckpointError, match="no tensor fits"):
        warm_start(_nets(config), "contour-fast")  # the distilled student: another architecture


def test_a_source_that_fills_little_of_the_generator_is_an_error(tiny):
    """Another width shares only a bias or two with G_A: that is a run from scratch, not a warm start."""
    config, out = tiny
    run_train(config, "optim.max_steps=1")
    with pytest.raises(CheckpointError, match="only .* of G_A's"):
        warm_start(_nets(config, "model.ngf=8"), str(out))


def test_a_run_warm_started_from_another_records_it(tiny, tmp_path):
    config, out = tiny
    run_train(config, "optim.max_steps=2")
    second = tmp_path / "second"
    run_train(config, f"output_dir={second}", f"warm_start={out}", "optim.max_steps=1")
    step_dir = second / "checkpoints" / (second / "checkpoints" / "latest").read_text().strip()
    assert json.loads((step_dir / "G_A.json").read_text())["training"]["warm_start"] == str(out)
