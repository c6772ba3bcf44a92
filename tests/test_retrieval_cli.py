"""End to end: `linedraw index build/add/remove/info/merge`, `search`, `eval retrieval` with a tiny random
generator and a tiny random timm embedder (fast, offline)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from linedraw.cli import main
from linedraw.retrieval import gallery as gallery_module
from linedraw.retrieval.gallery import looks_like_drawing
from linedraw.retrieval.index import GalleryIndex

EMBEDDER = "timm:test_efficientnet:random"


def _photo(path: Path, shape: str, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    image = Image.new("RGB", (size, size), tuple(int(v) for v in rng.integers(120, 255, 3)))
    draw = ImageDraw.Draw(image)
    x, y = (int(v) for v in rng.integers(4, 20, 2))
    colour = tuple(int(v) for v in rng.integers(0, 120, 3))
    (draw.ellipse if shape == "cat" else draw.rectangle)((x, y, x + 22, y + 22), fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _sketch(path: Path, shape: str, seed: int, size: int = 48) -> None:
    image = Image.new("L", (size, size), 255)
    x = 6 + seed % 10
    (ImageDraw.Draw(image).ellipse if shape == "cat" else ImageDraw.Draw(image).rectangle)(
        (x, x, x + 22, x + 22), outline=0, width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """gallery/<class>/<id>.jpg (2 classes x 3), queries/<class>/<id>-1.png, a tiny generator checkpoint."""
    import torch

    from linedraw.checkpoint import save_generator
    from linedraw.models import create_model

    root = tmp_path_factory.mktemp("retrieval")
    for c, shape in enumerate(("cat", "dog")):
        for i in range(3):
            _photo(root / "gallery" / shape / f"{shape}{i}.jpg", shape, seed=10 * c + i)
            _sketch(root / "queries" / shape / f"{shape}{i}-1.png", shape, seed=i)
    torch.manual_seed(0)
    kwargs = {"in_channels": 3, "out_channels": 1, "ngf": 8, "n_blocks": 1}
    save_generator(create_model("resnet_generator", **kwargs), root / "gen", {"model": "resnet_generator",
                                                                              "kwargs": kwargs})
    return root


def _build(data: Path, out: Path, *extra: str, gallery: str | None = None) -> int:
    return main(["index", "build", gallery or str(data / "gallery"), "-o", str(out), "--checkpoint",
                 str(data / "gen.safetensors"), "--embedder", EMBEDDER, "--device", "cpu", "--quiet", *extra])


def test_build_search_add_remove_info(data, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    for path in (data / "gallery").rglob("*.jpg"):
        (gallery / path.parent.name).mkdir(parents=True, exist_ok=True)
        (gallery / path.parent.name / path.name).write_bytes(path.read_bytes())
    index = tmp_path / "index"
    assert _build(data, index, gallery=str(gallery)) == 0
    assert main(["index", "info", str(index)]) == 0
    out = capsys.readouterr().out
    assert "count" in out and " 6" in out and "flat" in out

    # search: a sketch query, JSON lines on stdout, and an HTML page with escaped names.
    query = tmp_path / "a<b>&c.png"
    _sketch(query, "cat", 0)
    page = tmp_path / "results.html"
    assert main(["search", str(index), str(query), "-k", "3", "--json", "--device", "cpu", "--html", str(page)]) == 0
    result = json.loads(capsys.readouterr().out.strip())
    assert len(result["results"]) == 3 and all(r["path"].startswith(str(gallery)) for r in result["results"])
    assert result["results"][0]["score"] >= result["results"][-1]["score"]
    html_text = page.read_text()
    assert "a&lt;b&gt;&amp;c.png" in html_text and "a<b>" not in html_text and "data:image/jpeg;base64," in html_text

    # add: everything unchanged; then a changed photo is re-embedded, a new one added, a touched one skipped.
    assert main(["index", "add", str(index), str(gallery), "--device", "cpu", "--quiet"]) == 0
    assert "6 unchanged skipped" in capsys.readouterr().out
    _photo(gallery / "cat" / "cat0.jpg", "dog", seed=99)  # new content
    _photo(gallery / "dog" / "dog9.jpg", "dog", seed=98)  # new photo
    os.utime(gallery / "cat" / "cat1.jpg", (1, 1))  # same content, new mtime
    with GalleryIndex.open(index) as before:
        old_ids = {i.id for i in before.items_for_path(str(gallery / "cat" / "cat0.jpg"))}
    assert main(["index", "add", str(index), str(gallery), "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "2 items added" in out and "1 changed photos re-embedded" in out and "5 unchanged skipped" in out
    with GalleryIndex.open(index) as after:
        assert after.count == 7
        renewed = after.items_for_path(str(gallery / "cat" / "cat0.jpg"))
        assert len(renewed) == 1 and renewed[0].id not in old_ids
        assert after.items_for_path(str(gallery / "cat" / "cat1.jpg"))[0].mtime == 1

    # remove: a whole folder, then a path that is not indexed (exit code 1, the rest still done).
    assert main(["index", "remove", str(index), str(gallery / "dog")]) == 0
    assert "4 items removed" in capsys.readouterr().out
    assert main(["index", "remove", str(index), str(gallery / "cat" / "cat2.jpg"), str(gallery / "nope.jpg")]) == 1
    with GalleryIndex.open(index) as final:
        assert final.count == 2 and {Path(i.path).name for i in final.all_items()} == {"cat0.jpg", "cat1.jpg"}
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".index")) == []


def test_bad_photo_is_reported_and_the_rest_indexed(data, tmp_path, capsys):
    gallery = tmp_path / "gallery" / "cat"
    gallery.mkdir(parents=True)
    (gallery / "broken.jpg").write_bytes(b"not a jpeg")
    (gallery / "good.jpg").write_bytes((data / "gallery" / "cat" / "cat0.jpg").read_bytes())
    assert _build(data, tmp_path / "index", gallery=str(tmp_path / "gallery")) == 1
    captured = capsys.readouterr()
    assert "broken.jpg" in captured.err and "1 photos failed" in captured.out
    with GalleryIndex.open(tmp_path / "index") as index:
        assert index.count == 1


def test_interrupted_build_resumes_where_it_stopped(data, tmp_path, monkeypatch):
    real = gallery_module._embed_chunk
    calls = []

    def crash_on_second(photos, encoder, bar):
        calls.append(len(photos))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(photos, encoder, bar)

    monkeypatch.setattr(gallery_module, "_embed_chunk", crash_on_second)
    assert _build(data, tmp_path / "index", "--chunk-size", "2") == 130  # the CLI's exit code for Ctrl-C
    assert not (tmp_path / "index").exists()  # nothing half-published
    assert (tmp_path / "index.work" / "chunk-000000.json").is_file()

    calls.clear()
    monkeypatch.setattr(gallery_module, "_embed_chunk", lambda p, e, b: (calls.append(len(p)), real(p, e, b))[1])
    assert _build(data, tmp_path / "index", "--chunk-size", "2") == 0
    assert calls == [2, 2]  # chunk 0 was reused; chunks 1 and 2 embedded now
    assert not (tmp_path / "index.work").exists()
    with GalleryIndex.open(tmp_path / "index") as index:
        assert index.count == 6


def test_eval_retrieval_of_a_two_view_index_reports_photos_drawings_and_fused(data, tmp_path, capsys):
    assert _build(data, tmp_path / "index") == 0  # default with a checkpoint: both views
    with GalleryIndex.open(tmp_path / "index") as index:
        assert index.views == ["drawing", "photo"] and index.index.d == 2 * index.dim
        assert index.manifest["fuse_weight"] == 0.6
    capsys.readouterr()
    report = tmp_path / "metrics.json"
    assert main(["eval", "retrieval", "--index", str(tmp_path / "index"), "--queries", str(data / "queries"),
                 "--device", "cpu", "--quiet", "--sweep", "--fuse-weight", "0.3", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    assert "building the raw-photo baseline" not in out
    payload = json.loads(report.read_text())
    assert list(payload["metrics"]) == ["raw photos", f"drawings ({data / 'gen.safetensors'})", "fused (w=0.3)"]
    assert [row["fuse_weight"] for row in payload["sweep"]] == [i / 10 for i in range(11)]
    # the ends of the sweep are the single views
    assert payload["sweep"][0]["mAP@all"] == payload["metrics"]["raw photos"]["mAP@all"]
    assert payload["sweep"][-1]["P@1"] == payload["metrics"][f"drawings ({data / 'gen.safetensors'})"]["P@1"]
    assert "| fuse weight | mAP@all | P@1 | acc@10 |" in out


def test_eval_retrieval_prints_drawings_and_raw_baseline(data, tmp_path, capsys):
    assert _build(data, tmp_path / "index", "--views", "drawing") == 0
    capsys.readouterr()
    report = tmp_path / "metrics.json"
    assert main(["eval", "retrieval", "--index", str(tmp_path / "index"), "--queries", str(data / "queries"),
                 "--device", "cpu", "--quiet", "--json", str(report)]) == 0
    out = capsys.readouterr().out
    header = next(line for line in out.splitlines() if line.startswith("| metric"))
    assert "raw photos" in header and "drawings" in header
    for metric in ("mAP@all", "mAP@200", "P@1", "R@50", "acc@1", "acc@10"):
        assert f"| {metric} |" in out
    metrics = json.loads(report.read_text())["metrics"]
    assert set(metrics) == {"raw photos", f"drawings ({data / 'gen.safetensors'})"}
    for column in metrics.values():
        assert column["queries"] == 6 and column["gallery"] == 6
        assert 0 < column["mAP@all"] <= 1 and column["acc@10"] == 1.0  # 6 photos: the own photo is in the top 10


def test_objects_from_coco_boxes(data, tmp_path, capsys):
    boxes = {"images": [{"id": 1, "file_name": "cat0.jpg"}], "categories": [{"id": 3, "name": "blob"}],
             "annotations": [{"id": 7, "image_id": 1, "category_id": 3, "bbox": [0, 0, 24, 24]},
                             {"id": 8, "image_id": 1, "category_id": 3, "bbox": [20, 20, 28, 28]}]}
    (tmp_path / "boxes.json").write_text(json.dumps(boxes))
    assert _build(data, tmp_path / "index", "--objects", "boxes", "--object-source", str(tmp_path / "boxes.json"),
                  gallery=str(data / "gallery" / "cat")) == 0
    assert "2 photos without objects" in capsys.readouterr().out
    with GalleryIndex.open(tmp_path / "index") as index:
        items = list(index.all_items())
    assert [(i.object, i.box) for i in items] == [("blob-7", (0, 0, 24, 24)), ("blob-8", (20, 20, 48, 48))]
    assert main(["search", str(tmp_path / "index"), str(data / "queries" / "cat" / "cat0-1.png"), "-k", "1",
                 "--device", "cpu"]) == 0
    assert "[blob-" in capsys.readouterr().out


def test_shards_built_alike_merge(data, tmp_path, capsys):
    template = tmp_path / "trained"
    assert _build(data, template, "--kind", "ivfpq") == 0
    for shard in ("0/2", "1/2"):
        assert _build(data, tmp_path / "part", "--like", str(template), "--shard", shard) == 0
    shards = sorted(str(p) for p in tmp_path.glob("part.shard*"))
    assert [Path(s).name for s in shards] == ["part.shard000-of-002", "part.shard001-of-002"]
    assert main(["index", "merge", *shards, "-o", str(tmp_path / "all")]) == 0
    assert "6 items" in capsys.readouterr().out
    with GalleryIndex.open(tmp_path / "all") as merged:
        assert merged.count == 6 and merged.manifest["kind"] == "ivfpq"
        assert len({i.path for i in merged.all_items()}) == 6


def test_sketches_are_told_from_photos(data):
    assert looks_like_drawing(Image.open(data / "queries" / "cat" / "cat0-1.png"))
    assert looks_like_drawing(Image.open(data / "queries" / "cat" / "cat0-1.png").convert("RGB"))
    assert not looks_like_drawing(Image.open(data / "gallery" / "cat" / "cat0.jpg"))


def test_search_fuse_weight_under_and_dedupe(data, tmp_path, capsys):
    gallery = tmp_path / "gallery"
    for path in (data / "gallery").rglob("*.jpg"):
        (gallery / path.parent.name).mkdir(parents=True, exist_ok=True)
        (gallery / path.parent.name / path.name).write_bytes(path.read_bytes())
    (gallery / "cat" / "cat0-copy.jpg").write_bytes((gallery / "cat" / "cat0.jpg").read_bytes())
    index = tmp_path / "index"
    assert _build(data, index, gallery=str(gallery)) == 0
    query = data / "queries" / "cat" / "cat0-1.png"

    def search(*extra: str) -> list[dict]:
        capsys.readouterr()
        assert main(["search", str(index), str(query), "-k", "7", "--json", "--device", "cpu", *extra]) == 0
        return json.loads(capsys.readouterr().out.strip())["results"]

    everything = search()
    assert len(everything) == 7
    # (the exact fused scores are checked in test_retrieval_views; the random test embedder differs per call)
    for weight in ("0", "0.5", "1"):
        assert {r["path"] for r in search("--fuse-weight", weight)} == {r["path"] for r in everything}
    under = search("--under", str(gallery / "dog"))
    assert len(under) == 3 and all(r["path"].startswith(str(gallery / "dog") + os.sep) for r in under)
    collapsed = [r["path"] for r in search("--dedupe", "0.9999")]  # the random test embedder puts all close
    assert len(collapsed) == 6  # the copy and its original are one result
    assert len({str(gallery / "cat" / "cat0.jpg"), str(gallery / "cat" / "cat0-copy.jpg")} & set(collapsed)) == 1
    with pytest.raises(SystemExit) as refused:  # argparse refuses it
        main(["search", str(index), str(query), "--fuse-weight", "2"])
    assert refused.value.code == 2
    assert "between 0 and 1" in capsys.readouterr().err


def test_build_views_flags(data, tmp_path, capsys):
    assert _build(data, tmp_path / "photos", "--views", "photo") == 0
    with GalleryIndex.open(tmp_path / "photos") as index:
        assert index.views == ["photo"] and index.manifest["checkpoint"] is None
    assert _build(data, tmp_path / "both", "--views", "photo,drawing", "--fuse-weight", "0.25") == 0
    with GalleryIndex.open(tmp_path / "both") as index:
        assert index.views == ["drawing", "photo"] and index.fuse_weight == 0.25
    capsys.readouterr()
    assert _build(data, tmp_path / "x", "--views", "sketch") == 2
    assert "error: --views: unknown view 'sketch'" in capsys.readouterr().err
    assert _build(data, tmp_path / "x", "--raw", "--views", "drawing") == 2
    assert "--raw" in capsys.readouterr().err
