"""Evaluation: recognizability (CLIP score), the BSDS500 edge benchmark, and the two-alternative user study."""
from __future__ import annotations

import json
import os


def write_json(path: str | os.PathLike, payload: object) -> None:
    """Write `payload` as indented JSON atomically (temp file in the same folder, then `os.replace`)."""
    from linedraw.images import write_text_atomic

    write_text_atomic(path, json.dumps(payload, indent=2) + "\n")
