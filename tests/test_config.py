from pathlib import Path

import pytest

from linedraw.config import ConfigError, TrainConfig, apply_overrides, load_config, save_config

REPO = Path(__file__).resolve().parents[1]


def test_shipped_configs_load_and_name_their_teachers():
    for name in ("smoke", "contour-offline", "paper"):
        cfg = load_config(REPO / "train" / "configs" / f"{name}.yaml")
        assert isinstance(cfg, TrainConfig) and cfg.name == name
        assert cfg.semantic.encoder and cfg.data.photos and cfg.data.drawings
    offline = load_config(REPO / "train" / "configs" / "contour-offline.yaml")
    assert offline.semantic.encoder == "efficientnet-lite0" and offline.geometry.estimator == "hed"
    assert "stand-in" in offline.notes


def test_unknown_key_is_an_error_naming_it(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b], sise: 64}\n")
    with pytest.raises(ConfigError, match="sise"):
        load_config(path)


def test_overrides_parse_as_yaml_and_nest():
    raw = apply_overrides({}, ["optim.max_steps=7", "loss.semantic=0", "data.flip=false", "semantic.encoder=x:y"])
    assert raw == {"optim": {"max_steps": 7}, "loss": {"semantic": 0}, "data": {"flip": False},
                   "semantic": {"encoder": "x:y"}}
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["optim.max_steps"])


def test_validation_rejects_what_cannot_work(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    with pytest.raises(ConfigError, match="multiple of 4"):
        load_config(path, ["data.size=30", "data.load_size=40"])
    with pytest.raises(ConfigError, match="cosine"):
        load_config(path, ["semantic.distance=l2"])
    with pytest.raises(ConfigError, match="nothing to train"):
        load_config(path, [f"loss.{k}=0" for k in ("gan", "cycle", "semantic", "geometry", "segmentation")])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(REPO / "train" / "configs" / "contour-offline.yaml", ["optim.max_steps=5"])
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg
