"""What a file's name says in a Sketchy-style dataset: a sketch `<photo-id>-N.png` was drawn from photo `<photo-id>`."""
from __future__ import annotations

import re

_SKETCH = re.compile(r"(?P<photo>.+)-\d+")


def photo_id_of_sketch(stem: str) -> str | None:
    """The photo id in a sketch's file stem (`n02691156_58-3` -> `n02691156_58`), or None when the stem has no
    `-N` suffix (a sketch not drawn from a known photo)."""
    match = _SKETCH.fullmatch(stem)
    return match.group("photo") if match else None
