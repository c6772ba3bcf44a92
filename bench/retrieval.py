"""Benchmark the index kinds `linedraw index build` chooses from: flat vs HNSW vs IVF-PQ (re-scored).

For each gallery size: build time (train + add + write), bytes per vector resident in RAM (the Faiss index as
loaded; IVF-PQ's float16 copies of the vectors are memory-mapped from disk and reported apart), single-query
latency p50/p99 at one thread, and recall@10 against exact search. The indexes are built, written, opened and
searched through `GalleryIndex`, with the `plan_index` parameters the product uses, so IVF-PQ includes its
exact re-scoring of candidates from the memory-mapped float16 vectors (`plain` rows show the same codes
without it).

Vectors are a documented synthetic mix: L2-normalised, clustered (a mixture of Gaussians around `--clusters`
random centres, like image embeddings; uniform random vectors are an unrealistic worst case for ANN).

    python bench/retrieval.py --sizes 1e4,1e5,1e6 --kinds ivfpq --json bench-retrieval.json
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from linedraw.retrieval.index import (
    GalleryIndex, Item, VECTOR_IDS_FILE, VECTORS_FILE, create_faiss_index, parse_size, plan_index,
)


def clustered_vectors(n: int, dim: int, centres: np.ndarray, rng: np.random.Generator, spread: float = 0.5) -> np.ndarray:
    """`n` unit vectors around randomly chosen `centres` (Gaussian noise of `spread` per unit dimension)."""
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, 100_000):
        count = min(100_000, n - start)
        picked = centres[rng.integers(0, len(centres), count)]
        out[start:start + count] = picked + rng.normal(scale=spread / np.sqrt(dim), size=(count, dim))
    faiss.normalize_L2(out)
    return out


def exact_top_k(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    index = faiss.IndexFlatIP(base.shape[1])
    index.add(base)
    return index.search(queries, k)[1]


def build(kind: str, base: np.ndarray, folder: Path, memory: int, train_per_cell: int) -> float:
    """Build and publish a `kind` index of `base` at `folder` as `index build` does; returns seconds."""
    n, dim = base.shape
    plan = plan_index(kind, n, dim, memory, on_disk=False)
    start = time.perf_counter()
    index = create_faiss_index(plan, dim)
    if not index.is_trained:
        cells = faiss.extract_index_ivf(index).nlist
        sample = base[np.random.default_rng(1).choice(n, min(n, train_per_cell * cells), replace=False)]
        index.train(sample)
    gallery = GalleryIndex.create(folder, {**plan.__dict__, "dim": dim, "embedder": "synthetic"}, index)
    for first in range(0, n, 100_000):
        block = base[first:first + 100_000]
        gallery.add(block, [Item(f"/synthetic/{first + i}.jpg", 0, 0.0, "", 0, 0) for i in range(len(block))])
    gallery.commit()
    gallery.close()
    return time.perf_counter() - start


def measure(index: GalleryIndex, queries: np.ndarray, truth: np.ndarray, k: int = 10, plain: bool = False) -> dict:
    """Time `queries` one at a time on the opened `index`; recall@k against `truth`."""
    saved = index.manifest.get("refine")
    if plain:  # the same codes without the exact re-scoring
        index.manifest["refine"], index._store = 0, None
    latencies, found = [], []
    for query in queries:
        tick = time.perf_counter()
        _, ids = index.search(query[None], k)
        latencies.append(time.perf_counter() - tick)
        found.append(ids[0])
    index.manifest["refine"] = saved
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
    return {"p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            f"recall@{k}": recall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated gallery sizes (default 1e4,1e5,1e6)")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500, help="queries timed one at a time")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components of the synthetic data")
    parser.add_argument("--memory", default="8G", help="budget passed to plan_index (IVF-PQ lists stay in RAM here)")
    parser.add_argument("--train-per-cell", type=int, default=64,
                        help="IVF-PQ training vectors per IVF cell (default: 64, as index build)")
    parser.add_argument("--build-threads", type=int, default=0, help="faiss threads while building (0: default)")
    parser.add_argument("--workdir", help="where the indexes are written (default: a temporary folder)")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    faiss.normalize_L2(centres)
    queries = clustered_vectors(args.queries, args.dim, centres, rng)
    workdir = Path(tempfile.mkdtemp(prefix="linedraw-bench-", dir=args.workdir))
    rows = []
    print(f"{args.dim}-d clustered synthetic vectors ({args.clusters} clusters), {args.queries} single queries at "
          f"1 faiss thread; built with {args.build_threads or faiss.omp_get_max_threads()} threads")
    print("| N | kind | factory | build s | RAM bytes/vector | disk bytes/vector | p50 ms | p99 ms | recall@10 |")
    print("|---:|---|---|---:|---:|---:|---:|---:|---:|")
    try:
        for size in (int(float(s)) for s in args.sizes.split(",")):
            base = clustered_vectors(size, args.dim, centres, rng)
            truth = exact_top_k(base, queries, 10)
            for kind in args.kinds.split(","):
                folder = workdir / f"{kind}-{size}"
                faiss.omp_set_num_threads(args.build_threads or os.cpu_count() or 1)
                build_s = build(kind, base, folder, parse_size(args.memory), args.train_per_cell)
                faiss.omp_set_num_threads(1)
                with GalleryIndex.open(folder) as index:
                    ram = faiss.serialize_index(index.index).nbytes / size
                    disk = sum((folder / f).stat().st_size for f in (VECTORS_FILE, VECTOR_IDS_FILE)
                               if (folder / f).exists()) / size
                    variants = [("", False)] + ([(" plain", True)] if index.manifest.get("refine") else [])
                    for suffix, plain in variants:
                        row = {"kind": kind + suffix, "factory": index.manifest["factory"], "n": size,
                               "build_s": build_s, "ram_bytes_per_vector": ram,
                               "disk_bytes_per_vector": 0.0 if plain else disk, "nprobe": index.manifest["nprobe"],
                               "ef_search": index.manifest["ef_search"], "refine": 0 if plain else
                               index.manifest.get("refine", 0), **measure(index, queries, truth, plain=plain)}
                        rows.append(row)
                        print(f"| {size:.0e} | {row['kind']} | {row['factory']} | {build_s:.1f} | {ram:.0f} | "
                              f"{row['disk_bytes_per_vector']:.0f} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | "
                              f"{row['recall@10']:.3f} |", flush=True)
                shutil.rmtree(folder)
            del base
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
