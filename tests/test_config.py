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


def test_crop_size_follows_the_generator_s_size_multiple(tmp_path, monkeypatch):
    """data.size is checked against ResnetGenerator.size_multiple, not a copy of its value."""
    from linedraw.models import ResnetGenerator

    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    assert load_config(path, ["data.size=36", "data.load_size=40"]).data.size == 36
    monkeypatch.setattr(ResnetGenerator, "size_multiple", 8)
    with pytest.raises(ConfigError, match="data.size=36 must be a multiple of 8"):
        load_config(path, ["data.size=36", "data.load_size=40"])


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


@pytest.mark.parametrize("override, key, message", [
    ("optim.max_steps=-5", "optim.max_steps", "at least 1"),
    ("optim.max_steps=abc", "optim.max_steps", "whole number"),
    ("optim.lr=fast", "optim.lr", "number"),
    ("optim.lr=0", "optim.lr", "positive"),
    ("optim.batch_size=2.5", "optim.batch_size", "whole number"),
    ("data.flip=maybe", "data.flip", "true or false"),
    ("data.workers=-1", "data.workers", "at least 0"),
    ("loss.gan=-1", "loss.gan", ">= 0"),
    ("geometry.out_indices=3", "geometry.out_indices", "list"),
    ("optim.mixed_precision=fp8", "optim.mixed_precision", "one of"),
    ("optim.mixed_precision=fp16", "optim.mixed_precision", "bf16"),
    ("log.keep=0", "log.keep", "at least 1"),
])
def test_every_value_is_checked_when_the_config_is_built(tmp_path, override, key, message):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path, [override])
    assert key in str(info.value) and f"override {override!r}" in str(info.value)


def test_a_bad_value_in_the_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\noptim: {lr: fast}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: optim\.lr='fast' must be a number"):
        load_config(path)


def test_an_exponent_without_a_dot_is_still_a_number(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    assert load_config(path, ["optim.lr=2e-4"]).optim.lr == pytest.approx(2e-4)


def test_malformed_yaml_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\ndata: {photos: [a], drawings: [b]\noptim: {}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: line \d+"):
        load_config(path)
    json_config = tmp_path / "bad.json"
    json_config.write_text('{"name": "x", "data": {"photos": ["a"]')
    with pytest.raises(ConfigError, match=r"bad\.json: line \d+"):
        load_config(json_config)


def test_the_removed_head_init_is_refused_with_a_reason(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\ngeometry: {head_init: head.safetensors}\n")
    with pytest.raises(ConfigError, match="geometry.head_init: it was removed"):
        load_config(path)


def test_data_root_resolves_from_the_file_and_an_override_from_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    path = tmp_path / "exp" / "c.yaml"
    path.write_text("data: {root: data, photos: [a], drawings: [b]}\n")
    monkeypatch.chdir(tmp_path)
    assert Path(load_config("exp/c.yaml").data.root) == tmp_path / "exp" / "data"
    assert Path(load_config("exp/c.yaml", ["data.root=elsewhere"]).data.root) == tmp_path / "elsewhere"


def test_shipped_configs_point_at_the_shared_data_beside_the_repo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # any working directory
    for name in ("smoke", "contour-offline", "paper"):
        cfg = load_config(REPO / "train" / "configs" / f"{name}.yaml")
        assert Path(cfg.data.root) == REPO.parent / "shared" / "data", name
