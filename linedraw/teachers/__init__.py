"""Frozen pretrained helpers ("teachers") behind small interfaces; each takes [0, 1] images and does its own
preprocessing. `semantic`: image encoders for the semantic loss; `features`: backbone features for the geometry
head; `hed`: HED edges; `targets`: geometry target maps (files by stem, estimators, precompute)."""
from linedraw.teachers.base import FrozenModule, MissingWeightsError
from linedraw.teachers.features import FeatureExtractor
from linedraw.teachers.hed import HED, load_hed
from linedraw.teachers.semantic import (ImageEncoder, build_semantic_encoder, imagenet_class_names,
                                        load_efficientnet_lite0)
from linedraw.teachers.targets import (TargetDirectory, TargetEstimator, build_estimator, precompute,
                                       read_target_map, register_estimator)

__all__ = [
    "FeatureExtractor", "FrozenModule", "HED", "ImageEncoder", "MissingWeightsError", "TargetDirectory",
    "TargetEstimator", "build_estimator", "build_semantic_encoder", "imagenet_class_names",
    "load_efficientnet_lite0", "load_hed", "precompute", "read_target_map", "register_estimator",
]
