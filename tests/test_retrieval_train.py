"""The sketch-aware embedder: loss math, augmentations, P x K batches, save/load, training (with exact
resume), zero-shot improvement on synthetic shapes, and the protocol / CLI end to end."""
from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from linedraw.retrieval import train_embedder as te
from linedraw.retrieval.augment import augment, partial_erasure, random_affine, stroke_thickness
from linedraw.retrieval.losses import batch_hard_triplet, cross_domain_supcon, retrieval_loss
from linedraw.retrieval.trained import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    build_trained_embedder,
    is_trained_embedder,
    load_trained_embedder,
    save_trained_embedder,
)

TINY = "timm:test_efficientnet:random"  # 0.36M parameters, 160 px input
SHAPES = {"triangle": 3, "square": 4, "pentagon": 5, "hexagon": 6, "star": -5, "circle": 0, "cross": -4, "arrow": -3}
UNSEEN = ["circle", "cross", "star"]


# --- synthetic data: shapes drawn as outline sketches and as filled "photos" -----------------------------------

def _outline(kind: int, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if kind == 0:
        n, radii = 40, [r] * 40
    elif kind > 0:
        n, radii = kind, [r] * kind
    elif kind == -4:  # a plus sign
        n, radii = 12, None
    else:  # a star (-5) or an arrow-like chevron (-3)
        n, radii = 2 * -kind, [r if i % 2 == 0 else r * 0.45 for i in range(2 * -kind)]
    if radii is None:
        w = r * 0.35
        pts = [(w, r), (-w, r), (-w, w), (-r, w), (-r, -w), (-w, -w),
               (-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w)]
    else:
        pts = [(radii[i] * math.cos(2 * math.pi * i / n), radii[i] * math.sin(2 * math.pi * i / n)) for i in range(n)]
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def build_shapes(root: Path, per_class: int = 8, size: int = 64, seed: int = 0) -> Path:
    """root/photo/<shape>/<id>.png (filled colour shapes on colour backgrounds), root/sketch/<shape>/<id>-1.png
    (wobbly black outlines of the same shape pose on white)."""
    rng = random.Random(seed)
    for name, kind in SHAPES.items():
        (root / "photo" / name).mkdir(parents=True)
        (root / "sketch" / name).mkdir(parents=True)
        for i in range(per_class):
            cx, cy = rng.uniform(24, 40), rng.uniform(24, 40)
            r, angle = rng.uniform(14, 22), rng.uniform(0, 2 * math.pi)
            pts = _outline(kind, cx, cy, r, angle)
            photo = Image.new("RGB", (size, size), tuple(rng.randrange(256) for _ in range(3)))
            ImageDraw.Draw(photo).polygon(pts, fill=tuple(rng.randrange(256) for _ in range(3)))
            photo.save(root / "photo" / name / f"{name}{i}.png")
            sketch = Image.new("L", (size, size), 255)
            wobbly = [(x + rng.uniform(-1.5, 1.5), y + rng.uniform(-1.5, 1.5)) for x, y in pts]
            ImageDraw.Draw(sketch).line(wobbly + wobbly[:1], fill=0, width=rng.choice([1, 2, 3]))
            sketch.save(root / "sketch" / name / f"{name}{i}-1.png")
    return root


@pytest.fixture(scope="module")
def shapes(tmp_path_factory) -> Path:
    return build_shapes(tmp_path_factory.mktemp("shapes"))


# --- losses ------------------------------------------------------------------------------------------------------

def test_supcon_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]])
    ql, gl = torch.tensor([0, 1]), torch.tensor([0, 0, 1])
    t = 0.5
    # query -> gallery: query 0 has positives 0, 1; query 1 has positive 2.
    s = torch.tensor([[1.0, 0.6, 0.0], [0.0, 0.8, 1.0]]) / t
    lp = s - torch.logsumexp(s, dim=1, keepdim=True)
    q2g = (-(lp[0, 0] + lp[0, 1]) / 2 - lp[1, 2]) / 2
    # gallery -> query: every gallery item has exactly one positive query.
    st = s.T
    lpt = st - torch.logsumexp(st, dim=1, keepdim=True)
    g2q = -(lpt[0, 0] + lpt[1, 0] + lpt[2, 1]) / 3
    expected = (q2g + g2q) / 2
    assert torch.allclose(cross_domain_supcon(q, g, ql, gl, temperature=t), expected, atol=1e-6)


def test_supcon_prefers_aligned_embeddings_and_skips_rows_without_positives():
    e = F.normalize(torch.eye(4), dim=-1)
    labels = torch.arange(4)
    aligned = cross_domain_supcon(e, e, labels, labels)
    swapped = cross_domain_supcon(e, e.flip(0), labels, labels)
    assert aligned < swapped
    # a query of a class with no gallery item contributes nothing (its row is dropped, not a NaN)
    loss = cross_domain_supcon(e, e[:2], labels, labels[:2])
    assert torch.isfinite(loss) and loss > 0
    no_positive_at_all = cross_domain_supcon(e[:2], e[2:], labels[:2], labels[2:])
    assert no_positive_at_all == 0 and no_positive_at_all.requires_grad is False


def test_batch_hard_triplet_matches_hand_computation():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    g = torch.tensor([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, 0.6]])
    ql, gl = torch.tensor([0, 1]), torch.tensor([0, 0, 1, 1])
    # query 0: positives d = 0, 0.4 -> hardest 0.4; negatives d = 1, 0.2 -> hardest 0.2 -> relu(0.1+0.4-0.2)=0.3
    # query 1: positives d = 0, 0.4 -> 0.4; negatives d = 1, 0.2 -> 0.2 -> 0.3
    loss = batch_hard_triplet(q, g, ql, gl, margin=0.1)
    assert torch.allclose(loss, torch.tensor(0.3), atol=1e-6)
    assert batch_hard_triplet(q, q, torch.tensor([0, 1]), torch.tensor([0, 1]), margin=0.1) == 0


def test_instance_term_is_the_same_loss_over_instance_ids():
    torch.manual_seed(0)
    q, g = F.normalize(torch.randn(6, 8), dim=-1), F.normalize(torch.randn(6, 8), dim=-1)
    classes, instances = torch.tensor([0, 0, 0, 1, 1, 1]), torch.arange(6)
    total, parts = retrieval_loss(q, g, classes, classes, instances, instances, instance_weight=0.5, temperature=0.2)
    expected = cross_domain_supcon(q, g, classes, classes, 0.2) + 0.5 * cross_domain_supcon(q, g, instances,
                                                                                          instances, 0.2)
    assert torch.allclose(total, expected)
    assert set(parts) == {"class", "instance"}
    with pytest.raises(ValueError, match="unknown loss"):
        retrieval_loss(q, g, classes, classes, kind="arcface")


# --- augmentations -----------------------------------------------------------------------------------------------

def _line_image() -> torch.Tensor:
    x = torch.ones(1, 1, 64, 64)
    x[:, :, 31:33, 8:56] = 0.0
    return x


def test_stroke_thickness_changes_ink_and_erasure_whitens():
    x = _line_image().repeat(32, 1, 1, 1)
    out = stroke_thickness(x, torch.Generator().manual_seed(0), max_radius=1)
    ink = (out < 0.5).flatten(1).sum(1)
    base = int((x[0] < 0.5).sum())
    assert (ink > base).any() and (ink < base).any() and (ink == base).any()
    erased = partial_erasure(x, torch.Generator().manual_seed(0))
    assert (erased >= x).all() and (erased > x).any()


def test_affine_and_augment_keep_range_shape_and_are_seeded():
    photos = torch.rand(4, 3, 40, 40)
    warped = random_affine(photos, torch.Generator().manual_seed(1))
    assert warped.shape == photos.shape and warped.min() >= 0 and warped.max() <= 1
    a = augment(_line_image().repeat(3, 1, 1, 1), torch.Generator().manual_seed(2), lines=True)
    b = augment(_line_image().repeat(3, 1, 1, 1), torch.Generator().manual_seed(2), lines=True)
    assert torch.equal(a, b)


# --- data and sampler --------------------------------------------------------------------------------------------

def test_scan_pairs_and_pk_sampler(shapes):
    sketches, gallery = te.scan_pairs(shapes / "sketch", shapes / "photo", ["square", "star", "triangle"])
    assert gallery.class_names == ["square", "star", "triangle"] and len(gallery.paths) == 24
    for i, path in enumerate(sketches.paths):  # every sketch pairs with the photo it was drawn from
        assert gallery.paths[int(sketches.instances[i])].stem == path.stem.rsplit("-", 1)[0]
    sampler = te.PKSampler(sketches, gallery, classes=2, samples=4)
    s_idx, g_idx = sampler.sample(torch.Generator().manual_seed(0))
    assert len(s_idx) == len(g_idx) == 8
    assert len(set(sketches.labels[s_idx].tolist())) == 2
    assert torch.equal(sketches.labels[s_idx], gallery.labels[g_idx])
    pairs = [sketches.instances[s] == gallery.instances[g] for s, g in zip(s_idx, g_idx)]
    assert sum(bool(p) for p in pairs) >= 4  # the first half of each class's gallery slots are the own photos
    with pytest.raises(FileNotFoundError, match="nosuchclass"):
        te.scan_pairs(shapes / "sketch", shapes / "photo", ["nosuchclass"])


def test_training_and_evaluation_read_sketch_names_alike(tmp_path):
    """A sketch `<photo-id>-N` belongs to photo `<photo-id>`; a sketch without `-N` belongs to no photo, in
    scan_pairs as in eval retrieval (one function, linedraw.retrieval.names.photo_id_of_sketch)."""
    from linedraw.retrieval.names import photo_id_of_sketch

    for tree, stems in (("photo", ["cat", "a-b"]), ("sketch", ["cat", "cat-1", "a-b-12", "dog-2"])):
        (tmp_path / tree / "c").mkdir(parents=True)
        for stem in stems:
            Image.new("L", (8, 8), 255).save(tmp_path / tree / "c" / f"{stem}.png")
    sketches, gallery = te.scan_pairs(tmp_path / "sketch", tmp_path / "photo")
    photo_of = {path.stem: (gallery.paths[int(i)].stem if int(i) >= 0 else None)
                for path, i in zip(sketches.paths, sketches.instances)}
    assert photo_of == {"cat": None, "cat-1": "cat", "a-b-12": "a-b", "dog-2": None}
    assert [photo_id_of_sketch(s) for s in ("cat", "cat-1", "a-b-12", "-3", "x-")] == [None, "cat", "a-b", None, None]
    assert len(set(sketches.instances[sketches.instances < 0].tolist())) == 2  # unpaired sketches: ids of their own


# --- save / load ---------------------------------------------------------------------------------------------------

def test_save_load_round_trip(tmp_path):
    model = build_trained_embedder(TINY, embed_dim=16, hidden_dim=32, unfreeze=["model.conv_head.*"])
    assert model.unfrozen_names() == ["model.conv_head.weight"]
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1)
        model.base.get_parameter("model.conv_head.weight").mul_(1.5)
    images = torch.rand(3, 1, 48, 48)
    expected = model.eval().encode(images)
    save_trained_embedder(model, tmp_path / "emb", training={"steps": 7})
    assert is_trained_embedder(tmp_path / "emb") and is_trained_embedder(tmp_path / "emb" / CONFIG_FILE)
    config = json.loads((tmp_path / "emb" / CONFIG_FILE).read_text())
    assert config["base"] == TINY and config["embed_dim"] == 16 and config["training"] == {"steps": 7}
    assert config["trained_base_parameters"] == ["model.conv_head.weight"]
    assert config["saved_base"] == "all"  # a random base cannot be rebuilt, so all of it is stored
    loaded = load_trained_embedder(tmp_path / "emb")
    assert not loaded.training and loaded.embed_dim == 16 and loaded.input_size == model.input_size
    out = loaded.encode(images)
    assert out.shape == (3, 16) and torch.allclose(out, expected, atol=1e-6)
    assert torch.allclose(out.norm(dim=-1), torch.ones(3))
    from linedraw.errors import UsageError

    with pytest.raises(UsageError, match=r"^unfreeze pattern 'no.such.layer.\*' matches no parameter"):
        build_trained_embedder(TINY, unfreeze=["no.such.layer.*"])  # the argument, not a CLI flag
    with pytest.raises(FileNotFoundError, match="not a trained embedder"):
        load_trained_embedder(tmp_path)


def test_rebuildable_base_saves_only_trained_tensors(tmp_path, monkeypatch):
    from linedraw.retrieval import trained

    monkeypatch.setattr(trained, "_base_is_rebuildable", lambda spec: True)
    model = build_trained_embedder(TINY, embed_dim=8, hidden_dim=8, unfreeze=["model.conv_head.*"])
    save_trained_embedder(model, tmp_path)
    from safetensors.torch import load_file

    keys = set(load_file(str(tmp_path / WEIGHTS_FILE)))
    assert keys == {"base.model.conv_head.weight"} | {f"head.{k}" for k in model.head.state_dict()}
    # rebuilt with other random weights: the checksum notices that the frozen base differs
    with pytest.warns(UserWarning, match="other weights than at training time"):
        load_trained_embedder(tmp_path)


# --- training -------------------------------------------------------------------------------------------------------

def _config(shapes: Path, out: Path, **overrides) -> te.EmbedderTrainConfig:
    settings = dict(sketches=str(shapes / "sketch"), gallery=str(shapes / "photo"), output_dir=str(out),
                    gallery_kind="photos", base=TINY, embed_dim=32, hidden_dim=64, steps=30, classes_per_batch=4,
                    samples_per_class=4, views=2, batch_size=16, save_every=10, lr=3e-3,
                    classes=[c for c in SHAPES if c not in UNSEEN])
    settings.update(overrides)
    return te.EmbedderTrainConfig(**settings)


def test_resume_repeats_the_uninterrupted_run(shapes, tmp_path, monkeypatch):
    settings = dict(steps=20, views=1, classes=["square", "triangle"], classes_per_batch=2)
    full, _ = te.train_embedder(_config(shapes, tmp_path / "full", **settings), quiet=True)
    real = te._step_generator

    def crash_at_15(seed, step, stream=0):
        if step == 15 and stream == 0:
            raise KeyboardInterrupt
        return real(seed, step, stream)

    monkeypatch.setattr(te, "_step_generator", crash_at_15)
    with pytest.raises(KeyboardInterrupt):
        te.train_embedder(_config(shapes, tmp_path / "cut", **settings), quiet=True)
    assert not (tmp_path / "cut" / WEIGHTS_FILE).exists()
    assert torch.load(tmp_path / "cut" / te.RESUME_FILE, weights_only=True)["step"] == 10
    monkeypatch.setattr(te, "_step_generator", real)
    resumed, _ = te.train_embedder(_config(shapes, tmp_path / "cut", **settings), quiet=True)
    for (name, a), b in zip(full.head.state_dict().items(), resumed.head.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name
    with pytest.raises(ValueError, match="other settings"):
        te.train_embedder(_config(shapes, tmp_path / "cut", **{**settings, "lr": 1e-2}), quiet=True)


@pytest.mark.slow
def test_tiny_run_improves_unseen_class_map(shapes, tmp_path):
    """Outline sketches vs filled colour shapes: a head trained on 5 shapes helps on 3 others. The base is the
    offline ImageNet EfficientNet-Lite0 (a random base has no shape features for a head to re-use)."""
    from linedraw.retrieval.protocol import evaluate_unseen
    from linedraw.teachers.base import MissingWeightsError
    from linedraw.teachers.semantic import load_efficientnet_lite0

    try:
        load_efficientnet_lite0()
    except MissingWeightsError as err:
        pytest.skip(f"offline EfficientNet-Lite0 weights unavailable: {err}")
    config = _config(shapes, tmp_path / "emb", base="efficientnet-lite0", steps=150, views=1)
    model, errors = te.train_embedder(config, quiet=True)
    assert not errors and is_trained_embedder(tmp_path / "emb")
    sketches, gallery = te.scan_pairs(shapes / "sketch", shapes / "photo", UNSEEN)
    rows = evaluate_unseen({"photos": (sketches, gallery)}, {"photos": model}, 16, torch.device("cpu"))
    base, trained = rows["raw photos + base"], rows["raw photos + trained"]
    assert trained["mAP@all"] > base["mAP@all"] + 0.1, rows


# --- protocol and CLI ------------------------------------------------------------------------------------------------

def _drawings_of(shapes: Path, out: Path) -> Path:
    """A stand-in for generated drawings: the photos' edges, dark on white, mirroring the photo tree."""
    from PIL import ImageFilter, ImageOps

    for photo in sorted((shapes / "photo").glob("*/*.png")):
        target = out / photo.parent.name / photo.name
        target.parent.mkdir(parents=True, exist_ok=True)
        edges = Image.open(photo).convert("L").filter(ImageFilter.FIND_EDGES)
        ImageOps.invert(edges.point(lambda v: 255 if v > 20 else 0)).save(target)
    return out


def test_protocol_cli_writes_split_table_and_usable_embedders(shapes, tmp_path, capsys):
    from linedraw.cli import main
    from linedraw.retrieval.embed import build_embedder

    drawings = _drawings_of(shapes, tmp_path / "drawings")
    out = tmp_path / "proto"
    argv = ["retrieval", "protocol", "--data", str(shapes), "--drawings", str(drawings), "-o", str(out),
            "--unseen", "3", "--base", TINY, "--steps", "6", "--views", "1", "--classes-per-batch", "3",
            "--embed-dim", "16", "--hidden-dim", "16", "--seed", "3"]
    assert main(argv) == 0
    table = capsys.readouterr().out
    for row in ("raw photos + base", "drawings + base", "drawings + trained", "raw photos + trained",
                "fused (w=0.6) + base", "fused (w=0.6) + trained"):
        assert f"| {row} |" in table
    split = json.loads((out / "split.json").read_text())
    assert len(split["unseen"]) == 3 and len(split["train"]) == 5 and split["seed"] == 3
    assert not set(split["unseen"]) & set(split["train"])
    results = json.loads((out / "results.json").read_text())
    assert results["queries"] == 24 and results["gallery"] == {"photos": 24, "drawings": 24}
    trained_classes = json.loads((out / "embedder-drawings" / CONFIG_FILE).read_text())["training"]["classes"]
    assert trained_classes == split["train"]  # unseen classes never reach training
    embedder = build_embedder(str(out / "embedder-drawings"))  # a normal --embedder for index build / search
    assert embedder.embed(torch.rand(2, 1, 32, 32)).shape == (2, 16)
    # a second run resumes: same split, same table, no retraining
    assert main(argv) == 0
    assert capsys.readouterr().out.splitlines()[:6] == table.splitlines()[:6]
    # the fused rows' ends are the single views (the trained embedders are reused, not retrained)
    assert main(argv + ["--fuse-weight", "1"]) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    assert rows["fused (w=1) + base"] == rows["drawings + base"]
    assert rows["fused (w=1) + trained"] == rows["drawings + trained"]
    assert main(argv[:-1] + ["4"]) == 2  # another seed: refuses to mix two splits in one output dir
    assert "another split" in capsys.readouterr().err


def test_train_cli_raw_photos_and_class_file(shapes, tmp_path):
    from linedraw.cli import main

    classes = tmp_path / "classes.txt"
    classes.write_text("square\ntriangle\n")
    out = tmp_path / "emb"
    argv = ["retrieval", "train", "--sketches", str(shapes / "sketch"), "--photos", str(shapes / "photo"), "--raw",
            "-o", str(out), "--classes", str(classes), "--base", TINY, "--steps", "3", "--views", "1",
            "--embed-dim", "8", "--hidden-dim", "8"]
    assert main(argv) == 0
    config = json.loads((out / CONFIG_FILE).read_text())
    assert config["training"]["classes"] == ["square", "triangle"]
    assert config["training"]["config"]["gallery_kind"] == "photos"
    assert load_trained_embedder(out).embed_dim == 8


class _Payload:
    """Unpickling this creates `marker` (stands in for any code a planted pickle could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_stop_signal_saves_the_step_it_reached_and_the_rerun_matches(shapes, tmp_path, monkeypatch):
    import os
    import signal

    settings = dict(steps=20, views=1, classes=["square", "triangle"], classes_per_batch=2, save_every=100)
    full, _ = te.train_embedder(_config(shapes, tmp_path / "full", **settings), quiet=True)
    real = te._step_generator

    def signal_at_12(seed, step, stream=0):
        if step == 12 and stream == 0:
            os.kill(os.getpid(), signal.SIGTERM)  # as `kill` or a scheduler would send it
        return real(seed, step, stream)

    monkeypatch.setattr(te, "_step_generator", signal_at_12)
    with pytest.raises(KeyboardInterrupt, match="after step 13"):
        te.train_embedder(_config(shapes, tmp_path / "cut", **settings), quiet=True)
    assert torch.load(tmp_path / "cut" / te.RESUME_FILE, weights_only=True)["step"] == 13
    monkeypatch.setattr(te, "_step_generator", real)
    resumed, _ = te.train_embedder(_config(shapes, tmp_path / "cut", **settings), quiet=True)
    for (name, a), b in zip(full.head.state_dict().items(), resumed.head.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name


def test_a_planted_resume_file_is_refused_naming_it(shapes, tmp_path):
    from linedraw.errors import LinedrawError

    out = tmp_path / "run"
    out.mkdir()
    marker = tmp_path / "pwned"
    torch.save({"step": _Payload(marker)}, out / te.RESUME_FILE)
    with pytest.raises(LinedrawError, match="resume.pt"):
        te.train_embedder(_config(shapes, out, steps=2, views=1), quiet=True)
    assert not marker.exists()


def test_settings_are_checked_before_any_work_naming_them(shapes, tmp_path):
    from linedraw.errors import UsageError

    for name, value in (("loss", "arcface"), ("steps", 0), ("temperature", 0.0), ("samples_per_class", 0)):
        with pytest.raises(UsageError, match=name if name != "loss" else "unknown loss"):
            te.train_embedder(_config(shapes, tmp_path / "o", **{name: value}), quiet=True)
    assert not (tmp_path / "o").exists()
