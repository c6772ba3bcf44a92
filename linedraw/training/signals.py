"""Stop on SIGINT/SIGTERM at a step boundary (the loop saves first), and DataLoader workers that leave it so."""
from __future__ import annotations

import signal
from types import FrameType


class StopOnSignal:
    """Inside `with StopOnSignal() as stop:`, SIGINT and SIGTERM set `stop.signum` instead of interrupting; the loop
    checks `stop.requested`, saves and returns `128 + stop.signum`. The previous handlers come back on exit."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict = {}

    def _handle(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> "StopOnSignal":
        self._previous = {s: signal.signal(s, self._handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc_info: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def ignore_stop_signals(_worker_id: int) -> None:
    """`worker_init_fn` for DataLoader workers: ignore SIGINT/SIGTERM, so a signal to the whole process group
    reaches the main process, which saves a checkpoint and then shuts the workers down."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
