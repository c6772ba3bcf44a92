"""Retrieval metrics with the definitions of the sketch-based image retrieval (SBIR) literature.

For a query, the gallery is ranked by decreasing score; `rel_i` is 1 when the i-th result is relevant (same
class, category-level), `R` is the number of relevant gallery items.

- P@K = (1/K) * sum_{i<=K} rel_i  (precision of the top K; Sketchy / ZS-SBIR "Prec@K").
- Recall@K = (1/R) * sum_{i<=K} rel_i  (share of all relevant items found in the top K).
- AP (mAP@all) = (1/R) * sum_i P@i * rel_i over the whole ranking (Sketchy, TU-Berlin extended; ZS-SBIR).
- AP@K (mAP@200) = (1/min(K, R)) * sum_{i<=K} P@i * rel_i, the normalisation of the ZS-SBIR evaluation code
  (SAKE's `eval_AP_inner`, reused by its successors); that code also interpolates precision VOC-style, which
  we do not (non-interpolated AP, like scikit-learn's), so its numbers run slightly higher.
- acc@K (instance level, Yu et al. 2016 "Sketch me that shoe"; Sketchy) = share of queries whose own photo
  ranks within the top K.
Each metric is averaged over queries.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_KS = (1, 5, 10, 20, 50)


def average_precision(relevant: np.ndarray, num_relevant: int, k: int | None = None) -> float:
    """Non-interpolated AP of one ranked 0/1 relevance vector, normalised by `num_relevant` (k=None,
    mAP@all) or by min(k, num_relevant) over the top `k` (mAP@k)."""
    relevant = np.asarray(relevant, dtype=np.float64)
    if k is not None:
        relevant = relevant[:k]
    hits = np.cumsum(relevant)
    precision = hits / np.arange(1, len(relevant) + 1)
    denominator = num_relevant if k is None else min(k, num_relevant)
    if denominator <= 0 or not len(relevant):
        return 0.0
    return float((precision * relevant).sum() / denominator)


def category_metrics(ranked_labels: np.ndarray, query_labels: Sequence, num_relevant: Sequence[int],
                     ks: Sequence[int] = DEFAULT_KS, map_at: int = 200) -> dict[str, float]:
    """Category-level metrics averaged over queries.

    `ranked_labels` (Q, N): gallery labels in rank order per query (the full gallery for mAP@all);
    `num_relevant[q]`: how many gallery items share query q's label.
    """
    ranked_labels = np.asarray(ranked_labels)
    relevant = ranked_labels == np.asarray(query_labels).reshape(-1, 1)
    totals = np.asarray(num_relevant, dtype=np.float64)
    out = {
        "mAP@all": float(np.mean([average_precision(r, n) for r, n in zip(relevant, totals)])),
        f"mAP@{map_at}": float(np.mean([average_precision(r, n, map_at) for r, n in zip(relevant, totals)])),
    }
    hits = np.cumsum(relevant, axis=1)
    for k in ks:
        found = hits[:, min(k, hits.shape[1]) - 1]
        out[f"P@{k}"] = float(np.mean(found / k))
        out[f"R@{k}"] = float(np.mean(np.where(totals > 0, found / np.maximum(totals, 1), 0.0)))
    return out


def instance_accuracy(ranked_ids: np.ndarray, true_ids: Sequence, ks: Sequence[int] = (1, 10)) -> dict[str, float]:
    """acc@K: share of queries whose own gallery item (`true_ids[q]`) is among the first K of `ranked_ids[q]`."""
    ranked_ids = np.asarray(ranked_ids)
    match = ranked_ids == np.asarray(true_ids).reshape(-1, 1)
    return {f"acc@{k}": float(match[:, :k].any(axis=1).mean()) for k in ks}
