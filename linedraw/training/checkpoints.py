"""Save / publish / prune / resume of a run's state: `ROOT/step_XXXXXXXX/` folders and `ROOT/latest`.

A save writes `step_XXXXXXXX.tmp/` (every process its RNG file, the main process the rest, plus whatever
`extra` adds, e.g. the generator for conversion), then `linedraw.checkpoint.publish_step_dir` renames it, moves
`latest` and deletes old folders, so an interrupted save never becomes the resume point.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch.nn as nn

from linedraw.checkpoint import publish_step_dir
from linedraw.training.state import RunState, RunStateError, load_state, save_state


class RunCheckpoints:
    """The resumable state of one run: `nets` (possibly accelerate-wrapped) and `stateful` objects under `root`."""

    def __init__(self, root: str | Path, accelerator: Any, state: RunState, nets: Mapping[str, nn.Module],
                 stateful: Mapping[str, Any], keep: int, legacy_stateful: Sequence[str] = ()) -> None:
        self.root, self.accelerator, self.state, self.keep = Path(root), accelerator, state, keep
        self.nets, self.stateful, self.legacy_stateful = dict(nets), dict(stateful), tuple(legacy_stateful)

    def _plain_nets(self) -> dict[str, nn.Module]:
        return {name: self.accelerator.unwrap_model(net) for name, net in self.nets.items()}

    def latest(self) -> Path | None:
        """The step folder `root/latest` names, or None when there is none yet."""
        latest = self.root / "latest"
        if not latest.is_file():
            return None
        step_dir = self.root / latest.read_text(encoding="utf-8").strip()
        if not step_dir.is_dir():
            raise RunStateError(f"{latest} names {step_dir}, which does not exist")
        return step_dir

    def resume(self) -> Path | None:
        """Load the latest saved state into the run's objects; returns its folder (None: nothing to resume)."""
        step_dir = self.latest()
        if step_dir is not None:
            load_state(step_dir, self.state, self._plain_nets(), self.stateful, self.accelerator.process_index,
                       self.legacy_stateful)
        return step_dir

    def save(self, extra: Callable[[Path], None] | None = None) -> Path:
        """Write the state at the current step (and `extra(folder)` on the main process), publish, prune."""
        accelerator = self.accelerator
        name = f"step_{self.state.step:08d}"
        tmp = self.root / f"{name}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save_state(tmp, self.state, self._plain_nets(), self.stateful, accelerator.process_index,
                   accelerator.is_main_process)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            if extra is not None:
                extra(tmp)
            publish_step_dir(self.root, name, self.keep)
        accelerator.wait_for_everyone()
        return self.root / name
