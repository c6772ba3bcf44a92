"""DiffAugment: shapes, gradients, determinism under a seeded generator, what each policy does, empty = identity."""
from __future__ import annotations

import pytest
import torch

from linedraw.errors import UsageError
from linedraw.models.augment import FILL, POLICIES, diff_augment, parse_policy

ALL = "color,translation,cutout"


def _batch(channels: int, h: int = 32, w: int = 48, seed: int = 0) -> torch.Tensor:
    return torch.rand(8, channels, h, w, generator=torch.Generator().manual_seed(seed)) * 0.8 + 0.1


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", [*POLICIES, ALL])
def test_shapes_kept_and_gradients_flow(channels, policy):
    x = _batch(channels).requires_grad_()
    y = diff_augment(x, policy, _gen())
    assert y.shape == x.shape and y.dtype == x.dtype
    (y * torch.rand_like(y)).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("policy", [*POLICIES, ALL])
def test_deterministic_given_a_seeded_generator(policy):
    x = _batch(3)
    assert torch.equal(diff_augment(x, policy, _gen(5)), diff_augment(x, policy, _gen(5)))
    assert not torch.equal(diff_augment(x, policy, _gen(5)), diff_augment(x, policy, _gen(6)))


def test_saved_generator_state_resumes_the_same_draws():
    x, generator = _batch(1), _gen(3)
    diff_augment(x, ALL, generator)
    state = generator.get_state()
    expected = [diff_augment(x, ALL, generator) for _ in range(3)]
    resumed = torch.Generator()
    resumed.set_state(state)
    assert all(torch.equal(a, diff_augment(x, ALL, resumed)) for a in expected)


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("policy", POLICIES)
def test_each_policy_changes_the_input(channels, policy):
    x = _batch(channels)
    assert not torch.equal(diff_augment(x, policy, _gen()), x)


def test_empty_policy_is_identity_and_draws_nothing():
    x, generator = _batch(3), _gen()
    state = generator.get_state()
    assert diff_augment(x, "", generator) is x
    assert diff_augment(x, " , ", generator) is x
    assert torch.equal(generator.get_state(), state)


def test_color_is_an_affine_map_per_image_for_drawings():
    x = _batch(1)
    y = diff_augment(x, "color", _gen())
    for xi, yi in zip(x, y):  # brightness and contrast only: y = a * x + b
        design = torch.stack([xi.flatten(), torch.ones(xi.numel())], dim=1)
        solution = torch.linalg.lstsq(design, yi.flatten()[:, None]).solution
        assert torch.allclose(design @ solution, yi.flatten()[:, None], atol=1e-5)
        assert 0.5 - 1e-5 <= solution[0].item() <= 1.5 + 1e-5


def test_color_changes_saturation_of_photos():
    x = _batch(3)
    y = diff_augment(x, "color", _gen())
    spread_x = (x - x.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3))
    spread_y = (y - y.mean(dim=1, keepdim=True)).abs().mean(dim=(1, 2, 3))
    ratio = spread_y / spread_x
    assert (ratio <= 2 * 1.5 + 1e-4).all() and ratio.std() > 0.05  # per-image factors, not one global one


def test_translation_shifts_by_at_most_an_eighth_with_grey_fill():
    x = _batch(1, 32, 48)
    y = diff_augment(x, "translation", _gen())
    shifts = []
    for xi, yi in zip(x, y):
        found = None
        for dy in range(-4, 5):
            for dx in range(-6, 7):
                expected = torch.full_like(xi, FILL)
                src = xi[:, max(0, -dy) : 32 - max(0, dy), max(0, -dx) : 48 - max(0, dx)]
                expected[:, max(0, dy) : max(0, dy) + src.shape[1], max(0, dx) : max(0, dx) + src.shape[2]] = src
                if torch.equal(expected, yi):
                    found = (dy, dx)
        assert found is not None, "output is not a grey-filled shift of at most 1/8 of the side"
        shifts.append(found)
    assert len(set(shifts)) > 1  # each image draws its own shift


def test_cutout_fills_one_rectangle_of_at_most_half_the_sides():
    x = _batch(3, 32, 48)
    y = diff_augment(x, "cutout", _gen())
    for xi, yi in zip(x, y):
        filled = (yi == FILL).all(dim=0)
        assert torch.equal(yi[:, ~filled], xi[:, ~filled])  # everything else untouched
        rows, cols = filled.any(dim=1).nonzero().flatten(), filled.any(dim=0).nonzero().flatten()
        assert 1 <= len(rows) <= 16 and 1 <= len(cols) <= 24
        assert int(filled.sum()) == len(rows) * len(cols)  # a single rectangle
        assert len(rows) == 16 or rows.min() == 0 or rows.max() == 31  # shorter only where clipped


def test_translation_and_cutout_add_no_ink_to_a_blank_drawing():
    """A fill of 0 is solid black on white paper: the discriminator then judges the block, not the strokes (the
    campaign's drawings bleached under it). Grey is no nearer ink than paper is to it."""
    paper = torch.ones(8, 1, 32, 32)
    y = diff_augment(paper, "translation,cutout", _gen())
    assert y.min() >= FILL and (y < 1).any()


def test_unknown_policy_names_the_argument():
    with pytest.raises(UsageError, match="policy='color,flip'.*'flip'"):
        diff_augment(_batch(1), "color,flip")
    assert parse_policy(" color , cutout ") == ("color", "cutout")
    with pytest.raises(UsageError, match=r"\(B, C, H, W\)"):
        diff_augment(torch.rand(1, 8, 8), "color")


def test_config_validates_the_policy(tmp_path):
    from linedraw.config import ConfigError, load_config

    path = tmp_path / "c.yaml"
    path.write_text("data: {photos: [a], drawings: [b]}\n")
    assert load_config(path).model.diffaugment == ""
    assert load_config(path, ["model.diffaugment=color,cutout"]).model.diffaugment == "color,cutout"
    with pytest.raises(ConfigError, match="model.diffaugment.*'flip'"):
        load_config(path, ["model.diffaugment=color,flip"])
    with pytest.raises(ConfigError, match="model.diffaugment=None must be a string"):
        load_config(path, ["model.diffaugment="])
