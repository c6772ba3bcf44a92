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

    # The other upsampling: every tensor still moves (rewritten by the generator), none keeps its fresh init.
    resized = _nets(config, "model.upsample=resize")
    copied, total = warm_start(resized, str(out))["G_A"]
    assert copied == total
    assert resized["G_A"].state_dict().keys() != source.keys()  # the layouts differ, so this is the rewrite at work
    expected = resized["G_A"].adapt_state_dict(source)
    for key, tensor in resized["G_A"].state_dict().items():
        assert torch.equal(tensor, expected[key].to(tensor.dtype)), key


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


def test_held_generators_stay_put_while_the_critics_learn_then_move(tiny, tmp_path):
    """optim.hold_generators_steps: a warm start's G_A is exactly the source's for that many steps while the
    discriminator, geometry head and U-Net train; the step after, the generator learns again (and resumes so)."""
    config, out = tiny
    run_train(config, "optim.max_steps=2")
    source = load_file(_state(out) / "nets.safetensors")
    second = tmp_path / "second"
    held = ("optim.hold_generators_steps=2", f"output_dir={second}", f"warm_start={out}")
    run_train(config, *held, "optim.max_steps=2")
    after_hold = load_file(_state(second) / "nets.safetensors")
    for net in ("G_A", "G_B"):
        for k in (k for k in source if k.startswith(f"{net}.")):
            assert torch.equal(after_hold[k], source[k]), k
    for net in ("D_B", "head", "unet"):
        assert any(not torch.equal(after_hold[k], source[k]) for k in source if k.startswith(f"{net}.")), net
    rows = [json.loads(line) for line in (second / "metrics.jsonl").read_text().splitlines()]
    assert all("gan" not in r and "cycle" not in r and "geometry" in r for r in rows)
    run_train(config, *held, "optim.max_steps=3")
    moved = load_file(_state(second) / "nets.safetensors")
    assert any(not torch.equal(moved[k], after_hold[k]) for k in source if k.startswith("G_A."))


def _state(out):
    return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
