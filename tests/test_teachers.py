"""Teachers: semantic encoders, feature extractor, HED port, target maps, precompute and its CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.cli import main as cli_main
from linedraw.images import ImageError
from linedraw.teachers import targets
from linedraw.teachers.base import MissingWeightsError
from linedraw.teachers.features import FeatureExtractor
from linedraw.teachers.semantic import build_semantic_encoder, imagenet_class_names, load_efficientnet_lite0

TINY_TIMM = "timm:test_efficientnet:random"  # 0.36M parameters, ImageNet mean/std, 160 px


def _lite0_or_skip():
    try:
        return load_efficientnet_lite0()
    except MissingWeightsError as err:
        pytest.skip(f"offline EfficientNet-Lite0 weights unavailable: {err}")


def _hed_or_skip():
    from linedraw.teachers.hed import load_hed

    try:
        return load_hed()
    except MissingWeightsError as err:
        pytest.skip(f"offline HED weights unavailable: {err}")


# --- semantic encoders --------------------------------------------------------------------------------------

def test_efficientnet_lite0_classifies_chelsea_as_egyptian_cat():
    skimage_data = pytest.importorskip("skimage.data")
    _lite0_or_skip()
    encoder = build_semantic_encoder("efficientnet-lite0")
    cat = torch.from_numpy(skimage_data.chelsea()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        logits = encoder.model(encoder.preprocess(cat))
        embedding = encoder.encode(cat)
    assert logits.argmax(1).item() == 285
    assert imagenet_class_names()[285] == "Egyptian cat"
    assert encoder.embed_dim == 1280 and embedding.shape == (1, 1280) and encoder.input_size == 224


def test_encoder_repeats_gray_before_normalising():
    encoder = build_semantic_encoder(TINY_TIMM)
    assert not torch.equal(encoder.normalize.mean[0, 0], encoder.normalize.mean[0, 1])  # per-channel stats matter
    gray = torch.rand(2, 1, 50, 70)
    with torch.no_grad():
        from_one = encoder.encode(gray)
        from_three = encoder.encode(gray.repeat(1, 3, 1, 1))
    assert from_one.shape == (2, encoder.embed_dim)
    torch.testing.assert_close(from_one, from_three)


def test_encoder_resize_is_antialiased():
    encoder = build_semantic_encoder(TINY_TIMM)
    noise = torch.rand(1, 3, 4 * encoder.input_size, 4 * encoder.input_size)
    pixels = encoder.preprocess(noise)
    assert pixels.shape[-2:] == (encoder.input_size, encoder.input_size)
    back = pixels * encoder.normalize.std + encoder.normalize.mean  # undo normalisation
    # Averaging 4x4 blocks of noise shrinks its spread about 4x; nearest or plain bicubic sampling would not.
    assert back.std() < 0.4 * noise.std()
    torch.testing.assert_close(back.mean(), noise.mean(), atol=0.01, rtol=0)


def test_encoder_is_frozen_but_passes_gradients_to_its_input():
    encoder = build_semantic_encoder(TINY_TIMM)
    encoder.train()
    assert not encoder.training and not encoder.model.training
    assert not any(p.requires_grad for p in encoder.parameters())
    drawing = torch.rand(2, 1, 64, 64, requires_grad=True)
    encoder.encode(drawing).square().sum().backward()
    assert drawing.grad is not None and drawing.grad.abs().sum() > 0


def test_timm_encoder_loads_a_weights_file(tmp_path):
    import timm

    reference = timm.create_model("test_efficientnet")
    torch.save(reference.state_dict(), tmp_path / "w.pth")
    encoder = build_semantic_encoder(f"timm:test_efficientnet:{tmp_path / 'w.pth'}")
    for key, value in reference.state_dict().items():
        torch.testing.assert_close(encoder.model.state_dict()[key], value)
    with pytest.raises(MissingWeightsError, match="missing.pth"):
        build_semantic_encoder(f"timm:test_efficientnet:{tmp_path / 'missing.pth'}")
    with pytest.raises(ValueError, match="unknown timm model"):
        build_semantic_encoder("timm:no_such_model:random")
    with pytest.raises(ValueError, match="unknown semantic encoder"):
        build_semantic_encoder("clip-b32")


@pytest.fixture
def tiny_open_clip(tmp_path):
    """A tiny open_clip architecture registered from a config file, and a weights file of it."""
    import open_clip

    config = {"embed_dim": 16,
              "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
              "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "linedraw-tiny-clip.json").write_text(json.dumps(config))
    open_clip.add_model_config(tmp_path / "linedraw-tiny-clip.json")
    model = open_clip.create_model("linedraw-tiny-clip", pretrained=None)
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    return model, tmp_path / "tiny.pt"


def test_open_clip_encoder_from_local_weights(tiny_open_clip):
    model, weights = tiny_open_clip
    encoder = build_semantic_encoder(f"openclip:linedraw-tiny-clip:{weights}")
    assert (encoder.embed_dim, encoder.input_size) == (16, 32)
    torch.testing.assert_close(encoder.normalize.mean.flatten(), torch.tensor(model.visual.preprocess_cfg["mean"]))
    images = torch.rand(3, 3, 40, 48)
    with torch.no_grad():
        expected = model.eval().encode_image(encoder.preprocess(images))
        torch.testing.assert_close(encoder.encode(images), expected)
    with pytest.raises(MissingWeightsError, match="neither a pretrained tag"):
        build_semantic_encoder("openclip:linedraw-tiny-clip:no-such-tag")
    with pytest.raises(ValueError, match="expected openclip:MODEL:PRETRAINED"):
        build_semantic_encoder("openclip:ViT-B-32")


# --- feature extractor -----------------------------------------------------------------------------------------

def test_feature_extractor_shapes_frozen_and_differentiable():
    extractor = FeatureExtractor("test_efficientnet", None, out_indices=(1, 2, 3))
    drawing = torch.rand(2, 1, 64, 96, requires_grad=True)
    features = extractor(drawing)
    assert [f.shape[1] for f in features] == extractor.channels
    assert [f.shape[-2:] for f in features] == [(64 // r, 96 // r) for r in extractor.reductions]
    sum(f.sum() for f in features).backward()
    assert drawing.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in extractor.parameters())
    torch.testing.assert_close(extractor(drawing.detach()), extractor(drawing.detach().repeat(1, 3, 1, 1)))


def test_feature_extractor_uses_the_wheel_weights():
    classifier = _lite0_or_skip()
    extractor = FeatureExtractor("tf_efficientnet_lite0", "efficientnet-lite0")
    torch.testing.assert_close(extractor.net.conv_stem.weight, classifier.conv_stem.weight)
    torch.testing.assert_close(extractor.net.blocks[3][0].bn1.running_var, classifier.blocks[3][0].bn1.running_var)


# --- HED ---------------------------------------------------------------------------------------------------

def test_hed_converts_every_keras_layer():
    import h5py

    from linedraw.teachers.hed import hed_weights_path

    hed = _hed_or_skip()
    state = hed.state_dict()
    assert len(state) == 2 * (13 + 5 + 1)  # 13 VGG convs, 5 side outputs, fuse; weight + bias each
    with h5py.File(hed_weights_path(), "r") as h5:
        kernel = h5["block3/layers/conv2d_2/vars/0"][()]  # (H, W, in, out)
        fuse = h5["fuse/vars/0"][()]
    assert kernel.shape == (3, 3, 256, 256)
    np.testing.assert_array_equal(state["blocks.2.4.weight"][7, 5, 0, 2].item(), kernel[0, 2, 5, 7])
    np.testing.assert_array_equal(state["fuse.weight"].flatten().numpy(), fuse.flatten())


def test_hed_input_is_caffe_bgr_minus_mean():
    from linedraw.teachers.hed import HED

    red = torch.zeros(1, 3, 2, 2)
    red[:, 0] = 1.0
    pixel = HED().preprocess(red)[0, :, 0, 0]
    torch.testing.assert_close(pixel, torch.tensor([-104.00699, -116.66877, 255 - 122.67892]))


def test_hed_responds_on_a_square_border_not_inside():
    hed = _hed_or_skip()
    image = torch.ones(1, 3, 64, 64)
    image[..., 20:44, 20:44] = 0.0
    with torch.no_grad():
        edges = hed(image)[0, 0]
    assert edges.shape == (64, 64)
    border = torch.cat([edges[20:44, 19:21].flatten(), edges[20:44, 43:45].flatten(),
                        edges[19:21, 20:44].flatten(), edges[43:45, 20:44].flatten()])
    assert border.mean() > 0.5
    assert edges[28:36, 28:36].mean() < 0.1 and edges[:8, :8].mean() < 0.1


# --- target maps ---------------------------------------------------------------------------------------------

def test_read_target_map_formats(tmp_path):
    gradient = np.linspace(0, 1, 12 * 10, dtype=np.float32).reshape(12, 10)
    Image.fromarray(np.round(gradient * 255).astype(np.uint8)).save(tmp_path / "a8.png")
    Image.fromarray(np.round(gradient * 65535).astype(np.uint16)).save(tmp_path / "a16.png")
    np.save(tmp_path / "f.npy", gradient)
    np.save(tmp_path / "u16.npy", np.round(gradient * 65535).astype(np.uint16)[None])
    for name, tolerance in [("a8.png", 0.5 / 255), ("a16.png", 0.5 / 65535), ("f.npy", 0), ("u16.npy", 0.5 / 65535)]:
        result = targets.read_target_map(tmp_path / name)
        assert result.dtype == np.float32 and result.shape == (12, 10)
        np.testing.assert_allclose(result, gradient, atol=tolerance + 1e-7)


def test_read_target_map_bad_files_name_the_file(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"not a png")
    np.save(tmp_path / "depth.npy", np.full((4, 4), 3.5, dtype=np.float32))
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red.png")
    for name, reason in [("junk.png", "not a readable image"), ("depth.npy", r"must lie in \[0, 1\]"),
                         ("red.png", "one grayscale channel"), ("absent.png", "no such file")]:
        with pytest.raises(ImageError, match=reason) as info:
            targets.read_target_map(tmp_path / name)
        assert name in str(info.value)


def test_write_then_read_is_16_bit_exact(tmp_path):
    values = torch.rand(9, 7)
    targets.write_target_map(values, tmp_path / "m.png")
    assert Image.open(tmp_path / "m.png").mode.startswith("I;16")
    np.testing.assert_allclose(targets.read_target_map(tmp_path / "m.png"), values.numpy(), atol=0.5 / 65535 + 1e-7)


def test_target_directory_matches_by_stem(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 2), np.float32))
    targets.write_target_map(np.ones((2, 2)), tmp_path / "b.png")
    folder = targets.TargetDirectory(tmp_path)
    assert len(folder) == 2 and "photos/a.jpg" in folder and "c.jpg" not in folder
    assert folder.read("x/b.JPG").min() == 1.0 and folder.read("c.jpg") is None
    np.save(tmp_path / "b.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(ValueError, match="two maps for the stem 'b'"):
        targets.TargetDirectory(tmp_path)


# --- estimators and precompute -------------------------------------------------------------------------------

class GrayEstimator(torch.nn.Module):
    """A tiny test estimator: the photo's luminance as its 'edge map'."""

    name, kind = "gray", "edges"

    def forward(self, photos: torch.Tensor) -> torch.Tensor:
        return photos.mean(dim=1, keepdim=True)


@pytest.fixture
def gray_estimator(monkeypatch):
    monkeypatch.setitem(targets.ESTIMATORS, "gray", lambda option: GrayEstimator())
    return targets.build_estimator("gray")


def test_estimator_specs_are_checked_offline():
    with pytest.raises(ValueError, match="known: .*hed.*midas"):
        targets.build_estimator("depth-anything")
    with pytest.raises(ValueError, match="unknown MiDaS model type 'DPT_Huge'; use one of DPT_Large"):
        targets.build_estimator("midas:DPT_Huge")
    assert targets.midas_model_type(None) == "DPT_Large" and targets.midas_model_type("MiDaS_small") == "MiDaS_small"
    assert targets._midas_size(321, 481, targets.MIDAS_MODELS["DPT_Large"]) == (384, 576)
    assert targets._midas_size(321, 481, targets.MIDAS_MODELS["MiDaS_small"]) == (160, 256)
    with pytest.raises(ValueError, match="already registered"):
        targets.register_estimator("hed", targets.HEDEstimator)


def test_registered_estimator_satisfies_the_protocol(gray_estimator):
    assert isinstance(gray_estimator, targets.TargetEstimator)
    assert gray_estimator(torch.ones(1, 3, 4, 4)).shape == (1, 1, 4, 4)


def _photos(folder, count=3):
    folder.mkdir()
    paths = []
    for i in range(count):
        paths.append(folder / f"p{i}.png")
        Image.fromarray(np.full((10, 14, 3), 60 * i, np.uint8)).save(paths[-1])
    return paths


def test_precompute_writes_resumes_and_reports_bad_photos(tmp_path, gray_estimator):
    photos = _photos(tmp_path / "photos")
    (tmp_path / "photos" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    photos.append(tmp_path / "photos" / "broken.jpg")
    out = tmp_path / "maps"
    first = targets.precompute(photos, out, gray_estimator, size=8)
    assert [p.name for p in first.written] == ["p0.png", "p1.png", "p2.png"]
    assert [p.name for p, _ in first.failed] == ["broken.jpg"]
    result = targets.read_target_map(out / "p2.png")
    assert result.shape == (10, 14)  # back at the photo's size although the estimator saw 8 px
    np.testing.assert_allclose(result, 120 / 255, atol=1e-3)
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]  # no temp files left

    second = targets.precompute(photos, out, gray_estimator)
    assert (len(second.written), len(second.skipped), len(second.failed)) == (0, 3, 1)
    with pytest.raises(ValueError, match="share the stem 'p0'"):
        targets.precompute(photos + [tmp_path / "p0.jpg"], out, gray_estimator)


def test_precompute_cli_exit_codes(tmp_path, gray_estimator, capsys):
    _photos(tmp_path / "good")
    out = tmp_path / "maps"
    assert cli_main(["precompute", str(tmp_path / "good"), "-o", str(out), "--estimator", "gray",
                     "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["p0.png", "p1.png", "p2.png"]
    capsys.readouterr()
    (tmp_path / "good" / "zz.png").write_bytes(b"")
    assert cli_main(["precompute", str(tmp_path / "good"), "-o", str(out), "--estimator", "gray", "-q"]) == 1
    err = capsys.readouterr().err
    assert err.count("zz.png") == 1 and "zz.png: empty file" in err, f"one line per bad photo: {err!r}"
    assert "precompute gray" not in err, "--quiet: no progress bar"
    assert cli_main(["precompute", str(tmp_path / "good"), "-o", str(out), "--estimator", "gray"]) == 1
    assert "precompute gray" in capsys.readouterr().err, "a progress bar without --quiet"
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["precompute", str(tmp_path / "good"), "-o", str(out), "--estimator", "gray", "--size", "0"])
    assert exit_info.value.code == 2 and "--size: must be at least 1" in capsys.readouterr().err
    assert cli_main(["precompute", str(tmp_path / "good"), "-o", str(out), "--estimator", "midas:nope"]) == 2
    assert cli_main(["precompute", str(tmp_path / "empty*"), "-o", str(out), "--estimator", "gray"]) == 2
