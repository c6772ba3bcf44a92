"""Retrieval metrics against hand-computed SBIR cases."""
from __future__ import annotations

import numpy as np
import pytest

from linedraw.retrieval.metrics import average_precision, category_metrics, instance_accuracy


def test_average_precision_by_hand():
    # Relevant at ranks 1, 3, 6 of 6; R = 3: AP = (1/1 + 2/3 + 3/6) / 3.
    ranked = np.array([1, 0, 1, 0, 0, 1])
    assert average_precision(ranked, 3) == pytest.approx((1 + 2 / 3 + 0.5) / 3)
    # A relevant item never retrieved still counts in R (R = 4): the sum is divided by 4.
    assert average_precision(ranked, 4) == pytest.approx((1 + 2 / 3 + 0.5) / 4)
    # AP@3 divides by min(3, R=3) = 3: (1 + 2/3) / 3.
    assert average_precision(ranked, 3, k=3) == pytest.approx((1 + 2 / 3) / 3)
    # AP@2 with R = 3 divides by min(2, 3) = 2: 1 / 2.
    assert average_precision(ranked, 3, k=2) == pytest.approx(0.5)
    assert average_precision(np.zeros(5), 0) == 0.0
    assert average_precision(np.array([0, 0, 1]), 1, k=2) == 0.0


def test_category_metrics_by_hand():
    # Query 0 ("cat"): ranking cat, dog, cat; 2 cats in the gallery.  Query 1 ("dog"): dog, cat, cat; 1 dog.
    ranked = np.array([["cat", "dog", "cat"], ["dog", "cat", "cat"]], dtype=object)
    out = category_metrics(ranked, ["cat", "dog"], [2, 1], ks=(1, 2), map_at=2)
    ap_cat, ap_dog = (1 + 2 / 3) / 2, 1.0
    assert out["mAP@all"] == pytest.approx((ap_cat + ap_dog) / 2)
    # AP@2: cat -> 1/min(2, 2) = 0.5; dog -> 1/min(2, 1) = 1.
    assert out["mAP@2"] == pytest.approx(0.75)
    assert out["P@1"] == pytest.approx(1.0)
    assert out["P@2"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert out["R@1"] == pytest.approx((1 / 2 + 1) / 2)
    assert out["R@2"] == pytest.approx((1 / 2 + 1) / 2)


def test_k_beyond_gallery_keeps_precision_over_k():
    ranked = np.array([["a", "b"]], dtype=object)
    out = category_metrics(ranked, ["a"], [1], ks=(5,))
    assert out["P@5"] == pytest.approx(1 / 5)  # the SBIR P@K divides by K even for short rankings
    assert out["R@5"] == pytest.approx(1.0)


def test_instance_accuracy_by_hand():
    ranked = np.array([["p1", "p2", "p3"], ["p3", "p1", "p2"], ["p2", "p3", "p1"]], dtype=object)
    out = instance_accuracy(ranked, ["p1", "p1", "p1"], ks=(1, 2, 3))
    assert out == {"acc@1": pytest.approx(1 / 3), "acc@2": pytest.approx(2 / 3), "acc@3": pytest.approx(1.0)}
