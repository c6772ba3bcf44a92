"""Pair photos with their drawings by relative path (without extension), falling back to unique stems."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

from linedraw.errors import MissingFileError


@dataclass
class Pairing:
    """Matched `(key, photo, drawing)` triples plus the files on either side that found no partner."""

    pairs: list[tuple[str, Path, Path]] = field(default_factory=list)
    photos_without_drawing: list[Path] = field(default_factory=list)
    drawings_without_photo: list[Path] = field(default_factory=list)


def image_key(relative: PurePath) -> str:
    """`a/b/cat.jpg` -> `a/b/cat`: the name a photo and its drawing share."""
    return relative.with_suffix("").as_posix()


def index_images(root: str | os.PathLike) -> dict[str, tuple[Path, Path]]:
    """All images under `root` by key -> (path, relative path); a key seen twice keeps the first (sorted)."""
    from linedraw.images import list_images

    if not Path(root).is_dir():
        raise MissingFileError(f"{root}: not a folder")
    index: dict[str, tuple[Path, Path]] = {}
    for path, relative in list_images([root]):
        index.setdefault(image_key(relative), (path, relative))
    return index


def pair_images(photos: dict[str, tuple[Path, Path]], drawings: dict[str, tuple[Path, Path]]) -> Pairing:
    """Match by key; leftovers whose file stem is unique on both sides are matched by stem (a flat folder of
    drawings made from a tree of photos)."""
    result = Pairing()
    common = sorted(set(photos) & set(drawings))
    result.pairs = [(key, photos[key][0], drawings[key][0]) for key in common]
    left_photos = {k: v for k, v in photos.items() if k not in drawings}
    left_drawings = {k: v for k, v in drawings.items() if k not in photos}
    photo_stems = _unique_stems(left_photos)
    drawing_stems = _unique_stems(left_drawings)
    for stem in sorted(set(photo_stems) & set(drawing_stems)):
        photo_key, drawing_key = photo_stems[stem], drawing_stems[stem]
        result.pairs.append((photo_key, left_photos.pop(photo_key)[0], left_drawings.pop(drawing_key)[0]))
    result.pairs.sort(key=lambda item: item[0])
    result.photos_without_drawing = sorted(path for path, _ in left_photos.values())
    result.drawings_without_photo = sorted(path for path, _ in left_drawings.values())
    return result


def _unique_stems(index: dict[str, tuple[Path, Path]]) -> dict[str, str]:
    stems: dict[str, list[str]] = {}
    for key, (path, _) in index.items():
        stems.setdefault(path.stem, []).append(key)
    return {stem: keys[0] for stem, keys in stems.items() if len(keys) == 1}
