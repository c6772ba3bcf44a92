"""Losses: the math on hand-made tensors, masking, and that optimising each one makes it fall."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from linedraw.losses import (
    GeometryLoss,
    SegmentationLoss,
    SemanticLoss,
    build_unet,
    cycle_loss,
    grey_loss,
    lsgan_discriminator_loss,
    lsgan_generator_loss,
)
from linedraw.models import GeometryHead, PatchDiscriminator, create_model


def _optimise(loss_fn, params, steps: int = 30, lr: float = 0.05) -> tuple[float, float]:
    """Run a few Adam steps on `loss_fn()`; return the first and last loss values."""
    opt = torch.optim.Adam(params, lr=lr)
    values = []
    for _ in range(steps):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
        values.append(loss.item())
    return values[0], values[-1]


# --- gan -------------------------------------------------------------------------------------------


def test_lsgan_values_on_hand_made_scores():
    ones, zeros, halves = torch.ones(2, 1, 3, 3), torch.zeros(2, 1, 3, 3), torch.full((2, 1, 3, 3), 0.5)
    assert lsgan_generator_loss(ones).item() == 0
    assert lsgan_generator_loss(zeros).item() == 1
    assert lsgan_generator_loss(halves).item() == pytest.approx(0.25)
    assert lsgan_discriminator_loss(ones, zeros).item() == 0
    assert lsgan_discriminator_loss(zeros, ones).item() == pytest.approx(1.0)  # 0.5 * (1 + 1)
    assert lsgan_discriminator_loss(halves, halves).item() == pytest.approx(0.25)
    assert lsgan_discriminator_loss(torch.full((1, 1, 2, 2), 3.0), zeros).item() == pytest.approx(2.0)


def test_lsgan_generator_loss_falls_against_a_fixed_discriminator():
    d = PatchDiscriminator(in_channels=1, ndf=4, n_layers=2).requires_grad_(False)
    logits = torch.zeros(2, 1, 32, 32, requires_grad=True)
    first, last = _optimise(lambda: lsgan_generator_loss(d(torch.sigmoid(logits))), [logits], steps=20)
    assert last < 0.5 * first


def test_lsgan_discriminator_loss_falls():
    d = PatchDiscriminator(in_channels=1, ndf=4, n_layers=2)
    real, fake = torch.rand(2, 1, 64, 64) * 0.2, torch.rand(2, 1, 64, 64) * 0.2 + 0.8
    first, last = _optimise(lambda: lsgan_discriminator_loss(d(real), d(fake)), d.parameters(), steps=20, lr=1e-2)
    assert last < 0.5 * first


# --- cycle -----------------------------------------------------------------------------------------


def test_cycle_loss_is_mean_absolute_error():
    a = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    b = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]]])
    assert cycle_loss(a, b).item() == pytest.approx((1 + 0 + 0.5 + 0) / 4)
    with pytest.raises(ValueError, match="shape"):
        cycle_loss(a, b[..., :1])


def test_cycle_loss_falls_when_training_a_tiny_generator():
    g = create_model("resnet_generator", in_channels=1, out_channels=1, ngf=8, n_blocks=1)
    x = torch.rand(2, 1, 32, 32)
    first, last = _optimise(lambda: cycle_loss(g(x), x), g.parameters(), steps=25, lr=2e-3)
    assert last < 0.7 * first


# --- semantic --------------------------------------------------------------------------------------


class TinyEncoder(nn.Module):
    """Stand-in for a frozen teacher: repeats 1 channel to 3, pools to 4x4, projects to 8 dims."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3 * 16, 8)
        self.calls: list[tuple[int, ...]] = []
        self.requires_grad_(False)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(images.shape))
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.proj(F.adaptive_avg_pool2d(images, 4).flatten(1))


def test_embedding_distances_on_hand_made_embeddings():
    loss = SemanticLoss(TinyEncoder(), distance="mse")
    cosine = SemanticLoss(TinyEncoder(), distance="cosine")
    a = torch.tensor([[1.0, 0.0]])
    # Same direction, different length: MSE sees it, cosine does not.
    assert loss.embedding_distance(a, torch.tensor([[2.0, 0.0]])).item() == pytest.approx(0.5)
    assert cosine.embedding_distance(a, torch.tensor([[2.0, 0.0]])).item() == pytest.approx(0.0)
    # Orthogonal and opposite directions.
    assert cosine.embedding_distance(a, torch.tensor([[0.0, 3.0]])).item() == pytest.approx(1.0)
    assert cosine.embedding_distance(a, torch.tensor([[-1.0, 0.0]])).item() == pytest.approx(2.0)
    assert loss.embedding_distance(a, torch.tensor([[-1.0, 0.0]])).item() == pytest.approx(2.0)
    # Batch mean.
    rows_a, rows_b = torch.tensor([[1.0, 0.0], [1.0, 0.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert cosine.embedding_distance(rows_a, rows_b).item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cosine"):
        SemanticLoss(TinyEncoder(), distance="l2")


@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_semantic_loss_matches_encoder_and_reaches_the_drawing_only(distance):
    encoder = TinyEncoder()
    loss_fn = SemanticLoss(encoder, distance=distance)
    drawing = torch.rand(2, 1, 32, 32, requires_grad=True)
    photo = torch.rand(2, 3, 32, 32, requires_grad=True)
    loss = loss_fn(drawing, photo)
    expected = loss_fn.embedding_distance(encoder.encode(drawing), encoder.encode(photo))
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert drawing.grad is not None and drawing.grad.abs().sum() > 0
    assert photo.grad is None
    assert encoder.calls[0] == (2, 3, 32, 32) and encoder.calls[1] == (2, 1, 32, 32)  # drawing stays 1-channel


@pytest.mark.parametrize("distance", ["mse", "cosine"])
def test_semantic_loss_falls(distance):
    loss_fn = SemanticLoss(TinyEncoder(), distance=distance, patches=2, patch_size=16)
    photo = torch.rand(2, 3, 32, 32)
    logits = torch.zeros(2, 1, 32, 32, requires_grad=True)
    first, last = _optimise(lambda: loss_fn(torch.sigmoid(logits), photo), [logits], steps=60, lr=0.1)
    assert last < 0.5 * first


def test_semantic_patches_share_locations_and_add_a_term():
    encoder = TinyEncoder()
    photo = torch.rand(2, 3, 32, 32)
    gray = photo.mean(1, keepdim=True)
    # A "drawing" equal to the gray photo, compared with the gray photo repeated: every patch pair is identical
    # only if drawing and photo crops come from the same place.
    loss_fn = SemanticLoss(encoder, patches=3, patch_size=8)
    assert loss_fn(gray, gray.expand(-1, 3, -1, -1)).item() == pytest.approx(0.0, abs=1e-12)
    assert (6, 3, 8, 8) in encoder.calls and (6, 1, 8, 8) in encoder.calls

    other = torch.rand(2, 1, 32, 32)
    torch.manual_seed(1)
    with_patches = loss_fn(other, photo)
    torch.manual_seed(1)
    drawing_patches, photo_patches = loss_fn.random_patches(other, photo)
    whole = loss_fn.embedding_distance(encoder.encode(other), encoder.encode(photo))
    patches = loss_fn.embedding_distance(encoder.encode(drawing_patches), encoder.encode(photo_patches))
    assert with_patches.item() == pytest.approx((whole + patches).item())
    with pytest.raises(ValueError, match="patch_size 64 is larger than the 32x32"):
        SemanticLoss(encoder, patches=1, patch_size=64)(other, photo)


# --- geometry --------------------------------------------------------------------------------------


class TinyFeatures(nn.Module):
    """Stand-in for the frozen feature extractor: three stride-2 convolutions, one feature map each."""

    channels = [4, 8, 8]

    def __init__(self) -> None:
        super().__init__()
        self.stages = nn.ModuleList(
            [nn.Conv2d(3, 4, 3, 2, 1), nn.Conv2d(4, 8, 3, 2, 1), nn.Conv2d(8, 8, 3, 2, 1)]
        )
        self.requires_grad_(False)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        assert images.shape[1] == 3, "the geometry loss must give the extractor 3 channels"
        out, x = [], images
        for stage in self.stages:
            x = torch.relu(stage(x))
            out.append(x)
        return out


class ConstantHead(nn.Module):
    """A head whose logits are one learnable number everywhere: makes the loss values hand-checkable."""

    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(value))

    def forward(self, features: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
        return self.value.expand(features[0].shape[0], 1, *size)


def test_geometry_loss_values_on_hand_made_logits():
    target = torch.ones(2, 1, 16, 16)
    valid = torch.tensor([True, True])
    drawing = torch.rand(2, 1, 16, 16)
    l1 = GeometryLoss(TinyFeatures(), ConstantHead(0.0), kind="l1")(drawing, target, valid)
    bce = GeometryLoss(TinyFeatures(), ConstantHead(0.0), kind="bce")(drawing, target, valid)
    assert l1.item() == pytest.approx(0.5)  # |sigmoid(0) - 1|
    assert bce.item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="kind"):
        GeometryLoss(TinyFeatures(), ConstantHead(0.0), kind="l2")


@pytest.mark.parametrize("kind", ["l1", "bce"])
def test_geometry_loss_falls_training_head_and_drawing(kind):
    features = TinyFeatures()
    head = GeometryHead(features.channels, width=8)
    loss_fn = GeometryLoss(features, head, kind=kind)
    # L1: a smooth depth-like map (the paper's use); BCE: binary blobs, edge-like, whose BCE minimum is 0.
    target = F.interpolate(torch.rand(2, 1, 4, 4), size=(32, 32), mode="bilinear")
    if kind == "bce":
        target = (target > 0.5).float()
    logits = torch.randn(2, 1, 32, 32, requires_grad=True)  # not constant: a blank drawing carries no geometry
    valid = torch.tensor([True, True])
    first, last = _optimise(
        lambda: loss_fn(torch.sigmoid(logits), target, valid), [logits, *head.parameters()], steps=80, lr=0.02
    )
    assert last < 0.6 * first


def test_geometry_rows_without_target_contribute_nothing():
    loss_fn = GeometryLoss(TinyFeatures(), GeometryHead(TinyFeatures.channels, width=8))
    drawing = torch.rand(3, 1, 32, 32, requires_grad=True)
    target = torch.rand(3, 1, 32, 32)
    target[2] = float("nan")  # whatever fills a missing target must not leak
    loss_two = loss_fn(drawing[:2], target[:2], torch.tensor([True, True]))
    loss_three = loss_fn(drawing, target, torch.tensor([True, True, False]))
    assert loss_three.item() == pytest.approx(loss_two.item(), rel=1e-6)
    loss_three.backward()
    assert torch.isfinite(drawing.grad).all()
    assert drawing.grad[2].abs().sum() == 0 and drawing.grad[:2].abs().sum() > 0


def test_geometry_batch_without_targets_is_zero_with_grad():
    head = GeometryHead(TinyFeatures.channels, width=8)
    loss_fn = GeometryLoss(TinyFeatures(), head)
    drawing = torch.rand(2, 1, 32, 32, requires_grad=True)
    loss = loss_fn(drawing, torch.full((2, 1, 32, 32), float("nan")), torch.tensor([False, False]))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in head.parameters())


# --- segmentation ----------------------------------------------------------------------------------


def _tiny_unet(num_classes: int = 3, in_channels: int = 3) -> nn.Module:
    return build_unet(
        "resnet18", num_classes, in_channels=in_channels, encoder_depth=3, decoder_channels=(16, 8, 8)
    )


def test_segmentation_ignore_index_and_class_pixels():
    net = nn.Conv2d(3, 3, 1)
    loss_fn = SegmentationLoss(net, ignore_index=255)
    drawing = torch.rand(2, 1, 8, 8)
    mask = torch.randint(0, 3, (2, 8, 8))
    mask[:, :4] = 255
    loss = loss_fn(drawing, mask, torch.tensor([True, True]))
    logits = net(drawing.expand(-1, 3, -1, -1))
    labelled = mask != 255
    expected = F.cross_entropy(logits.permute(0, 2, 3, 1)[labelled], mask[labelled])
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    # Changing what the ignored pixels would have been (any class instead of 255) changes the loss.
    relabelled = mask.clone()
    relabelled[:, :4] = 0
    assert loss_fn(drawing, relabelled, torch.tensor([True, True])).item() != pytest.approx(loss.item())


def test_segmentation_rows_without_mask_contribute_nothing():
    net = _tiny_unet().eval()  # eval: batch norm statistics must not couple the rows
    loss_fn = SegmentationLoss(net)
    drawing = torch.rand(3, 1, 64, 64)
    mask = torch.randint(0, 3, (3, 64, 64))
    loss_two = loss_fn(drawing[:2], mask[:2], torch.tensor([True, True]))
    loss_three = loss_fn(drawing, mask, torch.tensor([True, True, False]))
    assert loss_three.item() == pytest.approx(loss_two.item(), rel=1e-5)


def test_segmentation_batch_without_masks_is_zero_with_grad():
    net = nn.Conv2d(3, 3, 1)
    drawing = torch.rand(2, 1, 8, 8, requires_grad=True)
    loss = SegmentationLoss(net)(drawing, torch.zeros(2, 8, 8, dtype=torch.long), torch.tensor([False, False]))
    assert loss.item() == 0 and loss.requires_grad
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() == 0 for p in net.parameters())


@pytest.mark.parametrize("in_channels", [3, 1])
def test_segmentation_unet_any_size_and_loss_falls(in_channels):
    net = _tiny_unet(in_channels=in_channels)
    loss_fn = SegmentationLoss(net)
    drawing = torch.rand(2, 1, 40, 52)  # not a multiple of 32: padded and cropped back inside the loss
    mask = torch.randint(0, 3, (2, 40, 52))
    first, last = _optimise(lambda: loss_fn(drawing, mask, torch.tensor([True, True])), net.parameters(), 15, 1e-2)
    assert last < 0.8 * first


def test_segmentation_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="mask"):
        SegmentationLoss(nn.Conv2d(3, 2, 1))(
            torch.rand(1, 1, 8, 8), torch.zeros(1, 4, 4, dtype=torch.long), torch.tensor([True])
        )


def test_grey_loss_is_zero_on_ink_and_paper_and_one_at_mid_grey():
    binary = (torch.rand(2, 1, 8, 8) > 0.5).float()
    assert float(grey_loss(binary)) == 0.0
    assert float(grey_loss(torch.full((1, 1, 4, 4), 0.5))) == pytest.approx(1.0)
    assert float(grey_loss(torch.full((1, 1, 4, 4), 0.9))) == pytest.approx(4 * 0.9 * 0.1)
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        grey_loss(torch.rand(1, 3, 4, 4))


def test_grey_loss_pushes_each_pixel_to_the_nearer_end():
    logits = torch.tensor([[-0.8, -0.2], [0.3, 1.0]]).reshape(1, 1, 2, 2).requires_grad_()
    first, last = _optimise(lambda: grey_loss(torch.sigmoid(logits)), [logits], steps=60, lr=0.1)
    assert last < 0.2 * first
    assert torch.equal(torch.sigmoid(logits).detach().round(), torch.tensor([[0.0, 0.0], [1.0, 1.0]]).reshape(1, 1, 2, 2))
