"""Warm start: a fresh run's nets begin from an existing checkpoint instead of random weights (`warm_start:`).

The source is a shipped checkpoint name or a generator `.safetensors` (G_A only), or a training run folder (G_A,
and the discriminators, geometry head and U-Net where its latest state holds them). Every tensor whose name and
shape match is copied; the rest keep their fresh initialisation, so a run may change what the source could not
know. A generator of the other `model.upsample` is rewritten first (`ResnetGenerator.adapt_state_dict`), so a
resize-upsampling run starts with every layer of a transposed-convolution checkpoint. Only the weights move:
optimizer state, schedule and step start afresh.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

from linedraw.checkpoint import CheckpointError

log = logging.getLogger(__name__)


def source_weights(source: str) -> dict[str, dict[str, torch.Tensor]]:
    """`{net name: state dict}` from a run folder's latest state, or `{"G_A": ...}` from a generator checkpoint."""
    from linedraw.checkpoint import load_generator
    from linedraw.training.state import NETS_FILE, _load_safetensors

    path = Path(source)
    latest = path / "checkpoints" / "latest"
    if latest.is_file():
        step_dir = path / "checkpoints" / latest.read_text(encoding="utf-8").strip()
        nets_file = step_dir / NETS_FILE
        if not nets_file.is_file():
            raise CheckpointError(f"warm_start={source}: {step_dir} has no {NETS_FILE} (a state saved before "
                                  "linedraw 0.2); name its G_A.safetensors instead")
        weights: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in _load_safetensors(nets_file).items():
            net, _, parameter = key.partition(".")
            weights.setdefault(net, {})[parameter] = tensor
        return weights
    model, _ = load_generator(source)
    return {"G_A": model.state_dict()}


def warm_start(nets: Mapping[str, nn.Module], source: str) -> dict[str, tuple[int, int]]:
    """Copy matching tensors of `source` into `nets` (unwrapped modules); returns `{net: (copied, total)}`.

    Raises `CheckpointError` when nothing at all matches (the wrong source, not a partial fit)."""
    weights = source_weights(source)
    report: dict[str, tuple[int, int]] = {}
    for name, net in nets.items():
        saved = weights.get(name)
        if saved is None:
            continue
        if hasattr(net, "adapt_state_dict"):  # a generator with the other upsampling: every layer still fits
            saved = net.adapt_state_dict(saved)
        own = net.state_dict()
        fitting = {k: v for k, v in saved.items() if k in own and tuple(own[k].shape) == tuple(v.shape)}
        with torch.no_grad():
            for key, tensor in fitting.items():
                own[key].copy_(tensor.to(own[key].dtype))
        report[name] = (len(fitting), len(own))
        level = logging.INFO if len(fitting) == len(own) else logging.WARNING
        log.log(level, "warm start: %s <- %s: %d of %d tensors", name, source, len(fitting), len(own))
    if not any(copied for copied, _ in report.values()):
        raise CheckpointError(f"warm_start={source}: no tensor fits this run's nets "
                              f"({', '.join(nets)}); is it a checkpoint of this architecture?")
    copied, total = report.get("G_A", (0, 0))
    if "G_A" in nets and copied < total / 2:
        # The generator is the point of a warm start: a source that fills a few of its tensors (say the last bias
        # of another width) would leave a run from scratch that claims to continue one.
        raise CheckpointError(f"warm_start={source}: only {copied} of G_A's {total} tensors fit this run's "
                              "generator; is it a checkpoint of this architecture (model.ngf, model.n_blocks)?")
    return report
