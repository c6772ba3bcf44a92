"""Two-view galleries (drawing + raw photo, fused at search time), result filters (folder, near-duplicates) and
IVF-PQ's exact re-scoring from memory-mapped float16 vectors; indexes written before these still open."""
from __future__ import annotations

import faiss
import numpy as np
import pytest

from linedraw.errors import UsageError
from linedraw.retrieval.index import GalleryIndex, Item, VectorStore, create_faiss_index, plan_index

DIM = 32


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    faiss.normalize_L2(x)
    return x


def _items(n: int, folder=lambda i: "a" if i % 2 else "b") -> list[Item]:
    return [Item(f"/gallery/{folder(i)}/p{i}.jpg", 100 + i, 1.0, f"sha{i}", 32, 24) for i in range(n)]


def _two_view(path, kind: str, drawing: np.ndarray, photo: np.ndarray, weight: float = 0.5,
              items: list[Item] | None = None) -> GalleryIndex:
    n = len(drawing)
    x = np.hstack([drawing, photo])
    plan = plan_index(kind, n, 2 * DIM, 1 << 30, on_disk=False)
    index = create_faiss_index(plan, 2 * DIM)
    if not index.is_trained:
        index.train(x)
    gallery = GalleryIndex.create(path, {**plan.__dict__, "dim": DIM, "embedder": "e", "checkpoint": "c",
                                         "views": ["drawing", "photo"], "fuse_weight": weight}, index)
    gallery.add(x, items or _items(n))
    gallery.commit()
    return gallery


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_fused_scores_are_the_weighted_cosines_of_both_views(tmp_path, kind):
    rng = np.random.default_rng(0)
    drawing, photo = _unit(rng.normal(size=(400, DIM))), _unit(rng.normal(size=(400, DIM)))
    queries = _unit(rng.normal(size=(4, DIM)))
    _two_view(tmp_path / "index", kind, drawing, photo, weight=0.7).close()
    with GalleryIndex.open(tmp_path / "index") as index:
        assert index.views == ["drawing", "photo"] and index.dim == DIM and index.fuse_weight == 0.7
        for weight in (None, 0.0, 0.3, 1.0):
            w = 0.7 if weight is None else weight
            scores, ids = index.search(queries, 5, fuse_weight=weight)
            expected = w * np.einsum("qkd,qd->qk", drawing[ids], queries) + \
                (1 - w) * np.einsum("qkd,qd->qk", photo[ids], queries)
            np.testing.assert_allclose(scores, expected, atol=3e-3)  # exact (float16 store for IVF-PQ)
            if kind == "flat":
                truth = np.argsort(-(w * queries @ drawing.T + (1 - w) * queries @ photo.T), axis=1)[:, :5]
                assert ids.tolist() == truth.tolist()
        with pytest.raises(UsageError, match="fuse_weight"):
            index.search(queries, 5, fuse_weight=1.5)
        with pytest.raises(UsageError, match=f"rows of {DIM} values"):
            index.search(np.hstack([queries, queries]), 5)


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivfpq"])
def test_under_keeps_only_photos_in_that_folder(tmp_path, kind):
    rng = np.random.default_rng(1)
    drawing, photo = _unit(rng.normal(size=(400, DIM))), _unit(rng.normal(size=(400, DIM)))
    _two_view(tmp_path / "index", kind, drawing, photo).close()
    with GalleryIndex.open(tmp_path / "index") as index:
        scores, ids = index.search(drawing[:3], 20, under="/gallery/a")
        paths = [item.path for item in index.items(ids.ravel()) if item is not None]
        assert len(paths) == 60 and all(p.startswith("/gallery/a/") for p in paths)
        assert ids[1, 0] == 1  # item 1 lives in a/ and is its own best match
        _, none = index.search(drawing[:1], 5, under="/gallery/c")  # no such folder: no results
        assert (none == -1).all()
        _, similar = index.search(drawing[:1], 5, under="/gallery/a_")  # LIKE wildcards are taken literally
        assert (similar == -1).all()


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_dedupe_collapses_near_duplicate_photos(tmp_path, kind):
    rng = np.random.default_rng(2)
    drawing, photo = _unit(rng.normal(size=(400, DIM))), _unit(rng.normal(size=(400, DIM)))
    photo[1] = _unit((photo[0] + 0.01 * rng.normal(size=DIM))[None])[0]  # photo 1 is a near copy of photo 0
    drawing[1] = drawing[0]
    _two_view(tmp_path / "index", kind, drawing, photo).close()
    query = _unit((drawing[0] + photo[0])[None])
    with GalleryIndex.open(tmp_path / "index") as index:
        _, ids = index.search(query, 5)
        assert set(ids[0, :2].tolist()) == {0, 1}
        _, kept = index.search(query, 5, dedupe=0.95)
        assert len({0, 1} & set(kept[0].tolist())) == 1 and (kept[0] >= 0).all()
        assert len(set(kept[0].tolist())) == 5
        with pytest.raises(UsageError, match="dedupe"):
            index.search(query, 5, dedupe=2.0)


def _clustered(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = _unit(rng.normal(size=(50, dim)))
    return _unit(centres[rng.integers(0, 50, n)] + rng.normal(scale=0.5 / np.sqrt(dim), size=(n, dim)))


def test_ivfpq_rescored_from_memory_mapped_float16_finds_the_true_neighbours(tmp_path):
    n, dim = 4000, 64
    x = _clustered(n, dim, 0)
    queries = _clustered(50, dim, 0)  # the same mixture: neighbours are close
    plan = plan_index("ivfpq", n, dim, 1 << 30, on_disk=False)
    assert plan.refine > 0
    index = create_faiss_index(plan, dim)
    index.train(x)
    gallery = GalleryIndex.create(tmp_path / "index", {**plan.__dict__, "dim": dim, "embedder": "e"}, index)
    gallery.add(x, _items(n))
    gallery.commit()
    gallery.close()
    truth = np.argsort(-(queries @ x.T), axis=1)[:, :10]
    with GalleryIndex.open(tmp_path / "index") as opened:
        store = opened.store
        assert isinstance(store.vectors, np.memmap) and store.vectors.dtype == np.float16
        assert isinstance(store.ids, np.memmap) and store.vectors.shape == (n, dim)
        np.testing.assert_allclose(store.get(np.array([5, -1, 7])), np.stack([x[5], np.zeros(dim), x[7]]),
                                   atol=1e-3)
        _, rescored = opened.search(queries, 10)
        opened.manifest["refine"], opened._store = 0, None  # the same codes, not re-scored
        _, plain = opened.search(queries, 10)

    def recall(found):
        return np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found.tolist(), truth.tolist())])

    assert recall(rescored) >= 0.95
    assert recall(plain) < 0.8


def _ivfpq_gallery(path, x: np.ndarray, uncommitted: int | None = None) -> GalleryIndex:
    """An IVF-PQ gallery (re-scored from float16) trained on the rows `x`, all of them added and committed; or,
    with `uncommitted`, only that many added and the work copy left open."""
    n, dim = x.shape
    plan = plan_index("ivfpq", n, dim, 1 << 30, on_disk=False)
    index = create_faiss_index(plan, dim)
    index.train(x)
    gallery = GalleryIndex.create(path, {**plan.__dict__, "dim": dim, "embedder": "e"}, index)
    if uncommitted is not None:
        gallery.add(x[:uncommitted], _items(uncommitted))
        return gallery
    gallery.add(x, _items(n))
    gallery.commit()
    return gallery


def test_a_reader_opened_before_a_write_keeps_its_own_float16_vectors(tmp_path):
    """The codes and the float16 rows a reader re-scores with come from one version of the index, even when a
    writer replaces the index between the reader's open and its first search."""
    n = 2000
    x = _clustered(n, 64, 5)
    _ivfpq_gallery(tmp_path / "index", x).close()
    with GalleryIndex.open(tmp_path / "index") as reader:
        with GalleryIndex.edit(tmp_path / "index") as writer:
            writer.remove(list(range(0, n, 2)))
        scores, ids = reader.search(x[10:11], 1)
    assert ids[0, 0] == 10 and scores[0, 0] > 0.99, (ids, scores)


def test_store_follows_adds_and_removes(tmp_path):
    n, dim = 2000, 64
    x = _clustered(n, dim, 3)
    gallery = _ivfpq_gallery(tmp_path / "index", x, uncommitted=1500)
    # added rows wait on disk in the work copy, not in memory (a 1e6-photo build would hold gigabytes)
    assert (gallery.directory / "added.f16").stat().st_size == 1500 * dim * 2 and not gallery._pending
    gallery.commit()
    gallery.close()
    assert not (tmp_path / "index" / "added.f16").exists()
    with GalleryIndex.edit(tmp_path / "index") as writable:
        writable.remove(list(range(0, 1500, 3)))
        writable.add(x[1500:], _items(500))  # ids 1500..1999
    with GalleryIndex.open(tmp_path / "index") as opened:
        ids = np.asarray(opened.store.ids)
        assert opened.count == len(ids) == 1500
        assert (np.diff(ids) > 0).all() and not np.isin(np.arange(0, 1500, 3), ids).any()
        np.testing.assert_allclose(opened.store.get(ids), x[ids], atol=1e-3)


@pytest.mark.parametrize("kind", ["flat", "ivfpq"])
def test_an_index_written_before_views_and_rescoring_still_opens_and_searches(tmp_path, kind):
    """The manifest of an earlier linedraw: no views, fuse weight or refine; IVF-PQ without float16 vectors."""
    n = 400
    x = _clustered(n, DIM, 4)
    plan = plan_index(kind, n, DIM, 1 << 30, on_disk=False)
    old_manifest = {"kind": plan.kind, "factory": plan.factory, "nprobe": plan.nprobe, "ef_search": plan.ef_search,
                    "on_disk": plan.on_disk, "dim": DIM, "embedder": "e", "checkpoint": "contour",
                    "embedder_name": "e", "objects": None, "draw_size": 256, "next_id": 0}
    index = create_faiss_index(plan, DIM)
    if not index.is_trained:
        index.train(x)
    gallery = GalleryIndex.create(tmp_path / "old", old_manifest, index)
    gallery.add(x, _items(n))
    gallery.commit()
    gallery.close()
    assert sorted(p.name for p in (tmp_path / "old").iterdir()) == ["index.faiss", "manifest.json", "meta.sqlite"]
    with GalleryIndex.open(tmp_path / "old") as opened:
        assert opened.views == ["drawing"] and opened.fuse_weight == 1.0 and opened.store is None
        scores, ids = opened.search(x[:3], 5, fuse_weight=0.2)  # one view: the weight has nothing to weigh
        assert ids.shape == (3, 5) and (ids >= 0).all()
        _, under = opened.search(x[:3], 5, under="/gallery/a")
        assert all(i % 2 for i in under.ravel().tolist())
        if kind == "flat":
            assert ids[:, 0].tolist() == [0, 1, 2]
            assert opened.search(x[:3], 5, dedupe=0.99)[1].shape == (3, 5)
        else:
            with pytest.raises(UsageError, match="rebuild it"):
                opened.search(x[:3], 5, dedupe=0.99)
    with GalleryIndex.edit(tmp_path / "old") as writable:  # and it can still be changed
        writable.remove([0])
    with GalleryIndex.open(tmp_path / "old") as opened:
        assert opened.count == n - 1


def test_vector_store_of_the_wrong_size_is_refused(tmp_path):
    VectorStore.write(tmp_path, [(np.arange(3), np.ones((3, 4), np.float16))], 4)
    assert VectorStore(tmp_path, 4).vectors.shape == (3, 4)
    with pytest.raises(Exception, match="float16 rows"):
        VectorStore(tmp_path, 5)
