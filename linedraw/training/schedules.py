"""Learning-rate schedules as `LambdaLR` factors of the step, so their position is saved with the run state."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch.optim.lr_scheduler import LambdaLR


def linear_decay(total_steps: int, decay_start: int) -> Callable[[int], float]:
    """Constant, then linear decay to 0 from `decay_start` to `total_steps` (the paper's schedule)."""
    def factor(step: int) -> float:
        if step < decay_start:
            return 1.0
        return max(0.0, 1.0 - (step - decay_start) / max(1, total_steps - decay_start))

    return factor


def warmup_cosine(warmup: int, total_steps: int) -> Callable[[int], float]:
    """Linear warm-up over `warmup` steps, then cosine decay to 0 at `total_steps`."""
    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def schedule(optimizer: torch.optim.Optimizer, factor: Callable[[int], float]) -> LambdaLR:
    """`LambdaLR(optimizer, factor)`: step it after every optimizer step (not `accelerator.prepare`d, which would
    step it once per process)."""
    return LambdaLR(optimizer, factor)


def resync(scheduler: LambdaLR, step: int) -> None:
    """Put `scheduler` at `step` and set its optimizer's learning rates from this run's factors (after a resume,
    whose saved rates may come from another total length, or from a state saved without a scheduler)."""
    scheduler.last_epoch = step
    lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    for group, lr in zip(scheduler.optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs
