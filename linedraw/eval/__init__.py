"""Evaluation: recognizability (CLIP score), the BSDS500 edge benchmark, and the two-alternative user study."""
from __future__ import annotations

import json
import os
import tempfile


def write_json(path: str | os.PathLike, payload: object) -> None:
    """Write `payload` as indented JSON atomically (temp file in the same folder, then `os.replace`)."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2)
            handle.write("\n")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
