"""Gallery index storage: kinds, add/remove/search, atomic publish and crash recovery, shard merges."""
from __future__ import annotations

import json
import os

import faiss
import numpy as np
import pytest

from linedraw.errors import UsageError
from linedraw.retrieval.index import (
    SHARD_ID_BITS, GalleryIndex, Item, choose_kind, create_faiss_index, merge_indexes, parse_size, plan_index,
    publish, recover,
)

DIM = 64


def _vectors(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    faiss.normalize_L2(x)
    return x


def _items(n: int, prefix: str = "p") -> list[Item]:
    return [Item(f"/gallery/{prefix}{i}.jpg", 100 + i, 1.0, f"sha{i}", 32, 24) for i in range(n)]


def _build(path, kind: str, n: int = 400, on_disk: bool = False, first_id: int = 0, seed: int = 0,
           template: GalleryIndex | None = None) -> GalleryIndex:
    x = _vectors(n, seed)
    plan = plan_index(kind, n, DIM, 1 << 30, on_disk)
    if template is None:
        index = create_faiss_index(plan, DIM)
        if not index.is_trained:
            index.train(x)
    else:
        from linedraw.retrieval.index import empty_clone

        index = empty_clone(template.index)
    gallery = GalleryIndex.create(path, {**plan.__dict__, "dim": DIM, "embedder": "e", "checkpoint": "c",
                                         "next_id": first_id}, index)
    gallery.add(x, _items(n, f"s{seed}-"))
    gallery.commit()
    return gallery


def test_parse_size_and_auto_kind():
    assert parse_size("512M") == 512 * 2**20
    assert parse_size("1.5G") == int(1.5 * 2**30)
    assert parse_size("2048") == 2048
    for bad in ("1e999", "1.2.3", "e", "1e999G"):
        with pytest.raises(UsageError, match="memory"):
            parse_size(bad)
    with pytest.raises(UsageError, match="memory: cannot read a size"):
        parse_size("lots")
    assert choose_kind(1000, 512, 8 << 30) == "flat"
    assert choose_kind(1_000_000, 512, 8 << 30) == "hnsw"
    assert choose_kind(100_000_000, 512, 8 << 30) == "ivfpq"
    big = plan_index("auto", 50_000_000, 512, 2 << 30)
    assert big.factory == "IVF262144_HNSW32,PQ64x8np" and big.on_disk  # 50M x 72 B > 2 GiB
    assert plan_index("auto", 200_000_000, 512, 64 << 30).factory.startswith("IVF1048576_HNSW32,")
    assert not plan_index("ivfpq", 1_000_000, 512, 8 << 30).on_disk


@pytest.mark.parametrize("kind,on_disk", [("flat", False), ("hnsw", False), ("ivfpq", False), ("ivfpq", True)])
def test_add_search_remove_roundtrip(tmp_path, kind, on_disk):
    path = tmp_path / "index"
    _build(path, kind, on_disk=on_disk).close()
    assert (path / "lists.ivfdata").exists() == on_disk
    x = _vectors(400)
    with GalleryIndex.open(path) as index:
        assert index.count == 400 and index.manifest["kind"] == kind
        _, ids = index.search(x[:5], 10)
        if kind == "ivfpq":  # compressed codes: each vector must still find itself near the top
            assert all(i in row for i, row in enumerate(ids.tolist()))
        else:
            assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]
        assert index.items([3, -1])[0].path == "/gallery/s0-3.jpg"
    with GalleryIndex.edit(path) as index:
        assert index.remove([0, 1]) == 2
    with GalleryIndex.open(path) as index:
        assert index.count == 398
        _, ids = index.search(x[:2], 5)
        assert not {0, 1} & set(ids.ravel().tolist())
        assert index.items([0]) == [None]
        assert json.loads((path / "manifest.json").read_text())["count"] == 398
    assert sorted(os.listdir(tmp_path)) == ["index"]  # no temporary copies left behind


def test_failed_edit_leaves_published_index_untouched(tmp_path):
    path = tmp_path / "index"
    _build(path, "flat", n=50).close()
    with pytest.raises(RuntimeError, match="boom"):
        with GalleryIndex.edit(path) as index:
            index.remove(range(10))
            raise RuntimeError("boom")
    with GalleryIndex.open(path) as index:
        assert index.count == 50
    assert sorted(os.listdir(tmp_path)) == ["index"]


def test_crash_between_publish_renames_is_recovered(tmp_path):
    path = tmp_path / "index"
    _build(path, "flat", n=20).close()
    # Simulate a crash right after `publish` moved the old index aside, before the new one took its place.
    os.rename(path, tmp_path / ".index.old-crash")
    (tmp_path / ".index.tmp-crash").mkdir()
    recover(path)
    with GalleryIndex.open(path) as index:
        assert index.count == 20
    # publish over an existing directory swaps it completely.
    new = tmp_path / "new"
    new.mkdir()
    (new / "marker").write_text("x")
    publish(new, path)
    assert os.listdir(path) == ["marker"] and not any(p.startswith(".index.old") for p in os.listdir(tmp_path))


def test_read_only_index_refuses_writes(tmp_path):
    _build(tmp_path / "index", "flat", n=5).close()
    with GalleryIndex.open(tmp_path / "index") as index, pytest.raises(RuntimeError, match="read-only"):
        index.remove([0])


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_merge_shards(tmp_path, kind):
    first = _build(tmp_path / "s0", kind, n=300, seed=0)
    # Shard 1 numbers from 1 << 40 and (for IVF-PQ) reuses shard 0's trained quantizer, as `--like` does.
    _build(tmp_path / "s1", kind, n=200, seed=1, first_id=1 << SHARD_ID_BITS, template=first).close()
    first.close()
    merged = merge_indexes(tmp_path / "all", [tmp_path / "s0", tmp_path / "s1"])
    merged.close()
    queries = _vectors(200, seed=1)[:3]
    with GalleryIndex.open(tmp_path / "all") as index:
        assert index.count == 500
        scores, ids = index.search(queries, 10)
        if kind == "ivfpq":  # candidates are re-scored with the merged float16 vectors: exact cosines
            everything = {**dict(enumerate(_vectors(300, 0))),
                          **{(1 << SHARD_ID_BITS) + i: v for i, v in enumerate(_vectors(200, 1))}}
            exact = [[float(everything[int(i)] @ q) for i in row] for row, q in zip(ids, queries)]
            np.testing.assert_allclose(scores, exact, atol=2e-3)
        else:
            assert ids[:, 0].tolist() == [(1 << SHARD_ID_BITS) + i for i in range(3)]
        assert index.items([(1 << SHARD_ID_BITS) + 2])[0].path == "/gallery/s1-2.jpg"
        assert index.items([5])[0].path == "/gallery/s0-5.jpg"
        assert index.manifest.get("on_disk", False) == (kind == "ivfpq")


def test_merge_refuses_mismatched_or_clashing_shards(tmp_path):
    _build(tmp_path / "a", "ivfpq", n=300, seed=0).close()
    _build(tmp_path / "b", "ivfpq", n=300, seed=1, first_id=1 << SHARD_ID_BITS).close()  # trained separately
    with pytest.raises(ValueError, match="training_fingerprint"):
        merge_indexes(tmp_path / "m", [tmp_path / "a", tmp_path / "b"])
    _build(tmp_path / "c", "flat", n=10).close()
    _build(tmp_path / "d", "flat", n=10, seed=1).close()  # same ids 0..9
    with pytest.raises(ValueError, match="share item ids"):
        merge_indexes(tmp_path / "m", [tmp_path / "c", tmp_path / "d"])
    assert not (tmp_path / "m").exists()
