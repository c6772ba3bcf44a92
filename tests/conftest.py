"""Shared fixtures: where the public data beside the repo lives, and a fast, repeatable torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest


def _shared_data_dir() -> Path:
    override = os.environ.get("LINEDRAW_SHARED_DATA")
    if override:
        return Path(override)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The `../shared/data` folder, or a skip naming where it was looked for (a user's clone has none)."""
    path = _shared_data_dir()
    if not (path / "README.md").is_file():
        pytest.skip(f"shared data not found at {path} (set LINEDRAW_SHARED_DATA to its location)")
    return path


@pytest.fixture(autouse=True)
def _seeded_torch():
    """Every test starts from the same torch RNG state, so tiny trainings are repeatable."""
    import torch

    torch.manual_seed(0)
    yield
