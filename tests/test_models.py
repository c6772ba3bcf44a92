"""Models: registry, generator shapes/ranges/size checks and upsampling modes, padding, PatchGAN geometry, image
pool, geometry head."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.models import (
    FastGenerator,
    GeometryHead,
    ImagePool,
    PatchDiscriminator,
    ResnetGenerator,
    create_model,
    crop_to,
    list_models,
    pad_to_multiple,
    register_model,
)


def test_registry_lists_and_builds_every_model():
    assert {"resnet_generator", "patch_discriminator", "geometry_head"} <= set(list_models())
    assert isinstance(create_model("resnet_generator", ngf=8, n_blocks=1), ResnetGenerator)
    assert isinstance(create_model("patch_discriminator", in_channels=1, ndf=8), PatchDiscriminator)
    assert isinstance(create_model("geometry_head", in_channels=[4, 8]), GeometryHead)


def test_registry_rejects_unknown_and_duplicate_names():
    with pytest.raises(KeyError, match="resnet_generator"):
        create_model("no_such_model")
    with pytest.raises(ValueError, match="already registered"):
        register_model("resnet_generator")(ResnetGenerator)


@pytest.mark.parametrize("in_channels,out_channels", [(3, 1), (1, 3)])
def test_generator_shapes_and_range(in_channels, out_channels):
    g = create_model("resnet_generator", in_channels=in_channels, out_channels=out_channels, ngf=8, n_blocks=1)
    y = g(torch.rand(2, in_channels, 64, 48) * 4 - 2)  # inputs outside [0,1] still give outputs in [0,1]
    assert y.shape == (2, out_channels, 64, 48)
    assert y.min() >= 0 and y.max() <= 1


def test_generator_paper_size_has_three_blocks():
    g = ResnetGenerator(ngf=64, n_blocks=3)
    blocks = [m for m in g.modules() if type(m).__name__ == "ResidualBlock"]
    assert len(blocks) == 3
    assert [m for m in g.modules() if isinstance(m, nn.Conv2d)][0].out_channels == 64
    assert not [m for m in g.modules() if isinstance(m, (nn.BatchNorm2d, nn.ZeroPad2d))]
    assert any(isinstance(m, nn.ReflectionPad2d) for m in g.modules())
    assert any(isinstance(m, nn.InstanceNorm2d) for m in g.modules())


@pytest.mark.parametrize("build", [lambda **kw: create_model("resnet_generator", upsample="resize", **kw),
                                   lambda **kw: create_model("resnet_generator_resize", **kw)],
                         ids=["upsample-kwarg", "registered-variant"])
def test_resize_upsampling_variant_builds_without_transposed_convolutions(build):
    g = build(in_channels=1, out_channels=3, ngf=8, n_blocks=1)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in g.modules())
    assert sum(isinstance(m, nn.Upsample) for m in g.modules()) == 2
    y = g(torch.rand(2, 1, 32, 24))
    assert y.shape == (2, 3, 32, 24) and y.min() >= 0 and y.max() <= 1
    by_kwarg = create_model("resnet_generator", in_channels=1, out_channels=3, ngf=8, n_blocks=1, upsample="resize")
    assert {k: v.shape for k, v in g.state_dict().items()} == {k: v.shape for k, v in by_kwarg.state_dict().items()}


def test_generator_rejects_unknown_upsample_mode():
    with pytest.raises(ValueError, match="upsample='bicubic'.*transpose, resize"):
        ResnetGenerator(ngf=8, n_blocks=1, upsample="bicubic")
    with pytest.raises(TypeError):
        create_model("resnet_generator_resize", upsample="transpose")


@pytest.mark.parametrize("seed", [0, 1])
def test_resize_upsampling_leaves_no_stride_2_checkerboard(seed):
    pytest.importorskip("skimage", reason="linedraw.eval.strokes needs scikit-image")
    from linedraw.eval.strokes import checkerboard_energy

    photo = F.interpolate(torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(seed)), size=(64, 64),
                          mode="bilinear", align_corners=False)
    energy = {}
    for upsample in ("transpose", "resize"):
        torch.manual_seed(seed)
        with torch.no_grad():
            drawing = ResnetGenerator(ngf=8, n_blocks=1, upsample=upsample)(photo)[0, 0]
        energy[upsample] = checkerboard_energy(drawing.numpy())
    assert energy["transpose"] > 0.05  # untrained transposed convolutions print the stride-2 pattern
    assert energy["resize"] < energy["transpose"] / 50


def test_config_validates_the_upsample_mode(tmp_path):
    from linedraw.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    assert load_config(path).model.upsample == "transpose"
    assert load_config(path, ["model.upsample=resize"]).model.upsample == "resize"
    with pytest.raises(ConfigError, match="model.upsample='bilinear' must be one of transpose, resize"):
        load_config(path, ["model.upsample=bilinear"])


def test_size_multiple_is_a_property_of_the_model_class():
    from linedraw.models import generator, size_multiple, student

    assert ResnetGenerator.size_multiple == FastGenerator.size_multiple == 4
    assert create_model("resnet_generator_resize", ngf=8, n_blocks=1).size_multiple == 4
    assert size_multiple(torch.nn.Conv2d(3, 1, 1)) == 1  # a model that names no grid is padded to none
    assert not hasattr(generator, "SIZE_MULTIPLE") and not hasattr(student, "SIZE_MULTIPLE")  # no copies


def test_the_shipped_student_shape_is_a_registered_variant():
    """`fast_generator_w24_b8` is FastGenerator at the shipped contour-fast's shape (timm-style named variant)."""
    named = create_model("fast_generator_w24_b8")
    spelled = FastGenerator(width=24, n_blocks=8, n_blocks_half=1, expansion=2)
    assert isinstance(named, FastGenerator)
    assert {k: v.shape for k, v in named.state_dict().items()} == {k: v.shape for k, v in spelled.state_dict().items()}
    assert create_model("fast_generator_w24_b8", in_channels=1).in_channels == 1
    with pytest.raises(TypeError, match="width"):
        create_model("fast_generator_w24_b8", width=8)  # the name fixes the shape


SAMPLES = Path(__file__).resolve().parents[1] / "samples"


@pytest.mark.skipif(not (SAMPLES / "drawings" / "camera.png").is_file(), reason="samples/ not in this checkout")
def test_default_transpose_upsampling_still_draws_the_shipped_samples():
    import linedraw
    from PIL import Image

    drawing = linedraw.load("contour", device="cpu")(Image.open(SAMPLES / "photos" / "camera.jpg"))
    shipped = Image.open(SAMPLES / "drawings" / "camera.png").convert("L")
    assert drawing.size == shipped.size
    assert np.abs(np.asarray(drawing, np.int16) - np.asarray(shipped, np.int16)).max() <= 1  # 8-bit rounding


def test_generator_rejects_sizes_not_multiple_of_4_and_wrong_channels():
    g = create_model("resnet_generator", ngf=8, n_blocks=1)
    with pytest.raises(ValueError, match="multiples of 4.*30x32"):
        g(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match="at least 8, got 4x32"):
        g(torch.rand(1, 3, 4, 32))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        g(torch.rand(1, 1, 32, 32))


@pytest.mark.parametrize("size", [(33, 35), (1, 2), (64, 61), (9, 8)])
def test_pad_to_multiple_and_crop_roundtrip(size):
    x = torch.rand(2, 3, *size)
    padded, original = pad_to_multiple(x, 4)
    assert original == size
    assert padded.shape[-2] % 4 == 0 and padded.shape[-1] % 4 == 0
    assert padded.shape[-2] - size[0] < 4 and padded.shape[-1] - size[1] < 4
    assert torch.equal(crop_to(padded, original), x)
    if min(padded.shape[-2:]) >= 8:
        g = create_model("resnet_generator", ngf=8, n_blocks=1)
        assert crop_to(g(padded), original).shape == (2, 1, *size)


def test_pad_reflects_content():
    x = torch.arange(18.0).reshape(1, 1, 3, 6)
    padded, _ = pad_to_multiple(x, 4)
    assert padded.shape[-2:] == (4, 8)
    assert torch.equal(padded[..., :3, 6:], x[..., :, [4, 3]])  # reflected, not zeros or repeated
    assert torch.equal(padded[..., 3, :6], x[..., 1, :])


def _measured_receptive_field(d: PatchDiscriminator, size: int = 160) -> int:
    """Width of the input region a central score depends on (norms removed: they mix the whole image)."""
    for name, module in list(d.model.named_children()):
        if isinstance(module, nn.InstanceNorm2d):
            d.model._modules[name] = nn.Identity()
    x = torch.rand(1, d.in_channels, size, size, requires_grad=True)
    out = d(x)
    out[0, 0, out.shape[-2] // 2, out.shape[-1] // 2].backward()
    cols = (x.grad[0].abs().sum(dim=(0, 1)) > 0).nonzero().flatten()
    return int(cols.max() - cols.min() + 1)


@pytest.mark.parametrize("n_layers,expected", [(3, 70), (2, 34), (1, 16)])
def test_patch_discriminator_receptive_field(n_layers, expected):
    d = PatchDiscriminator(in_channels=1, ndf=4, n_layers=n_layers)
    assert d.receptive_field == expected
    assert _measured_receptive_field(d) == expected


def test_patch_discriminator_output_shape_and_raw_scores():
    d = PatchDiscriminator(in_channels=3, ndf=8)
    assert d(torch.rand(2, 3, 256, 256)).shape == (2, 1, 30, 30)
    assert d(torch.rand(2, 3, 64, 64)).shape == (2, 1, 6, 6)
    assert not any(isinstance(m, nn.Sigmoid) for m in d.modules())


def test_image_pool_off_returns_input():
    pool = ImagePool(0)
    x = torch.rand(2, 1, 8, 8)
    assert pool.query(x) is x


def test_image_pool_returns_history():
    pool = ImagePool(3, seed=1)
    seen: list[torch.Tensor] = []
    history_returned = 0
    for step in range(12):
        batch = torch.full((2, 1, 4, 4), float(step)) + torch.arange(2.0)[:, None, None, None] / 10
        out = pool.query(batch)
        assert out.shape == batch.shape
        for image in out:
            if not any(torch.equal(image, b) for b in batch):
                assert any(torch.equal(image, s) for s in seen), "pool returned an image it never saw"
                history_returned += 1
        seen.extend(batch)
    assert len(pool.images) == 3
    assert history_returned > 0


def test_image_pool_state_dict_resumes_exactly():
    batches = [torch.rand(2, 1, 4, 4) for _ in range(10)]
    pool = ImagePool(4, seed=0)
    for b in batches[:5]:
        pool.query(b)
    buffer = io.BytesIO()
    torch.save(pool.state_dict(), buffer)
    expected = [pool.query(b) for b in batches[5:]]

    resumed = ImagePool(4, seed=123)  # a different seed: only the loaded state may matter
    buffer.seek(0)
    resumed.load_state_dict(torch.load(buffer))
    got = [resumed.query(b) for b in batches[5:]]
    assert all(torch.equal(a, b) for a, b in zip(expected, got))
    with pytest.raises(ValueError, match="size"):
        ImagePool(2).load_state_dict(pool.state_dict())


def _features(batch: int = 2) -> list[torch.Tensor]:
    return [torch.rand(batch, 4, 16, 16), torch.rand(batch, 8, 8, 8), torch.rand(batch, 16, 4, 4)]


def test_geometry_head_output_size():
    head = GeometryHead([4, 8, 16], out_channels=1, width=8)
    assert head(_features(), size=(64, 48)).shape == (2, 1, 64, 48)
    assert GeometryHead([4, 8, 16], out_channels=2)(_features(), size=(32, 32)).shape == (2, 2, 32, 32)
    with pytest.raises(ValueError, match="expects 3 feature maps"):
        head(_features()[:2], size=(64, 64))


def test_geometry_head_uses_every_scale():
    head = GeometryHead([4, 8, 16], width=8)
    features = [f.requires_grad_() for f in _features()]
    head(features, size=(32, 32)).sum().backward()
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in features)


def test_geometry_head_safetensors_roundtrip(tmp_path):
    head = GeometryHead([4, 8, 16], width=8)
    path = tmp_path / "heads" / "geometry.safetensors"
    head.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["geometry.safetensors"]  # no temp file left
    loaded = GeometryHead.from_safetensors(path, in_channels=[4, 8, 16])
    assert loaded.width == 8 and loaded.in_channels == [4, 8, 16]
    features = _features()
    assert torch.equal(loaded(features, (32, 32)), head(features, (32, 32)))

    with pytest.raises(ValueError, match=r"geometry\.safetensors.*\[4, 8, 16\].*\[4, 8, 32\]"):
        GeometryHead.from_safetensors(path, in_channels=[4, 8, 32])
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        GeometryHead.from_safetensors(tmp_path / "missing.safetensors")
    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file({"weight": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match="other.safetensors.*not a geometry head"):
        GeometryHead.from_safetensors(other)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="garbage.safetensors"):
        GeometryHead.from_safetensors(garbage)


def test_a_transposed_generator_rewritten_for_resize_draws_its_upsampling_box_filtered():
    """adapt_state_dict moves every tensor to the other layout; each resize convolution then computes exactly the
    transposed convolution's output through a 2x2 box filter (away from the border), and the rewrite round-trips."""
    torch.manual_seed(0)
    transposed = ResnetGenerator(ngf=4, n_blocks=1, upsample="transpose")
    resized = ResnetGenerator(ngf=4, n_blocks=1, upsample="resize")
    state = transposed.state_dict()
    adapted = resized.adapt_state_dict(state)
    resized.load_state_dict(adapted)  # strict: every key of the resize layout, none left over
    t_layers = [m for m in transposed.model if isinstance(m, nn.ConvTranspose2d)]
    r_layers = [i for i, m in enumerate(resized.model) if isinstance(m, nn.Upsample)]
    assert len(t_layers) == len(r_layers) == 2
    for t_layer, i in zip(t_layers, r_layers):
        r_layer = resized.model[i:i + 3]  # upsample, pad, conv
        x = torch.randn(1, t_layer.in_channels, 8, 8)
        with torch.no_grad():
            t, r = F.pad(t_layer(x), (1, 0, 1, 0)), r_layer(x)
        box = t[..., :-1, :-1] + t[..., 1:, :-1] + t[..., :-1, 1:] + t[..., 1:, 1:]
        bias = t_layer.bias.view(1, -1, 1, 1)  # added once by each layer, four times by the box
        assert torch.allclose((box - 3 * bias)[..., 2:-2, 2:-2], r[..., 2:-2, 2:-2], atol=1e-5)
    back = transposed.adapt_state_dict(adapted)
    assert set(back) == set(state) and all(torch.equal(back[k], state[k]) for k in state)
    # A state of neither layout (another width) is handed back as it is, for the caller's shape check.
    other = ResnetGenerator(ngf=8, n_blocks=1).state_dict()
    assert resized.adapt_state_dict(other).keys() == other.keys()
