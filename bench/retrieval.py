"""Benchmark the index kinds `linedraw index build` chooses from: flat vs HNSW vs IVF-PQ.

For each gallery size: build time (train + add), memory per vector (serialised index bytes / N), single-query
latency p50/p99, and recall@10 against exact search. Vectors are synthetic, L2-normalised and clustered
(a mixture of Gaussians, like image embeddings; uniform random vectors are an unrealistic worst case for ANN).
The indexes are built with the same `plan_index` parameters the product uses.

    python bench/retrieval.py --sizes 1e4,1e5 --json bench-retrieval.json
"""
from __future__ import annotations

import argparse
import json
import time

import faiss
import numpy as np

from linedraw.retrieval.index import configure_search, create_faiss_index, plan_index


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


def bench_kind(kind: str, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, memory: int, k: int = 10) -> dict:
    """Build one index kind on `base`, then time `queries` one at a time and measure recall@k."""
    n, dim = base.shape
    plan = plan_index(kind, n, dim, memory, on_disk=False)
    start = time.perf_counter()
    index = create_faiss_index(plan, dim)
    if not index.is_trained:
        rng = np.random.default_rng(1)
        sample = base[rng.choice(n, min(n, 500_000), replace=False)]
        index.train(sample)
    index.add_with_ids(base, np.arange(n, dtype=np.int64))
    build_s = time.perf_counter() - start
    configure_search(index, plan.nprobe, plan.ef_search)
    bytes_per_vector = faiss.serialize_index(index).nbytes / n
    latencies, found = [], []
    for query in queries:
        tick = time.perf_counter()
        _, ids = index.search(query[None], k)
        latencies.append(time.perf_counter() - tick)
        found.append(ids[0])
    recall = float(np.mean([len(set(f.tolist()) & set(t.tolist())) / k for f, t in zip(found, truth)]))
    return {"kind": kind, "factory": plan.factory, "n": n, "build_s": build_s, "bytes_per_vector": bytes_per_vector,
            "p50_ms": 1000 * float(np.percentile(latencies, 50)), "p99_ms": 1000 * float(np.percentile(latencies, 99)),
            f"recall@{k}": recall, "nprobe": plan.nprobe, "ef_search": plan.ef_search}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e4,1e5,1e6", help="comma-separated gallery sizes (default 1e4,1e5,1e6)")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=500, help="queries timed one at a time")
    parser.add_argument("--clusters", type=int, default=1000, help="mixture components of the synthetic data")
    parser.add_argument("--memory", default="8G", help="budget passed to plan_index (IVF-PQ lists stay in RAM here)")
    parser.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (0: faiss default)")
    parser.add_argument("--json", help="write the rows as JSON")
    args = parser.parse_args()

    from linedraw.retrieval.index import parse_size

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.clusters, args.dim)).astype(np.float32)
    faiss.normalize_L2(centres)
    queries = clustered_vectors(args.queries, args.dim, centres, rng)
    rows = []
    print(f"{args.dim}-d clustered synthetic vectors, {args.queries} single queries, "
          f"{faiss.omp_get_max_threads()} faiss threads")
    print("| N | kind | factory | build s | bytes/vector | p50 ms | p99 ms | recall@10 |")
    print("|---:|---|---|---:|---:|---:|---:|---:|")
    for size in (int(float(s)) for s in args.sizes.split(",")):
        base = clustered_vectors(size, args.dim, centres, rng)
        truth = exact_top_k(base, queries, 10)
        for kind in args.kinds.split(","):
            row = bench_kind(kind, base, queries, truth, parse_size(args.memory))
            rows.append(row)
            print(f"| {size:.0e} | {kind} | {row['factory']} | {row['build_s']:.1f} | {row['bytes_per_vector']:.0f} | "
                  f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['recall@10']:.3f} |", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=2)


if __name__ == "__main__":
    main()
