"""Object-level gallery items: each object of a photo is indexed on its own, cropped to its box.

Objects come from a COCO-style JSON (`images[].file_name` + `annotations[].bbox` as x, y, w, h) or from a folder
of label masks named by photo stem (`<stem>.png`, 0 = background, every other value one object; a
`classes.txt` beside the folder, one name per value, names them). Crops beat masked-out objects for retrieval,
so `boxes` is the default; `masks` also whitens the pixels outside the object's mask.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from linedraw.errors import InvalidFileError, MissingFileError
from linedraw.images import ImageError, open_image

MODES = ("boxes", "masks")


@dataclass(frozen=True)
class PhotoObject:
    """One object: a display name, its box (x0, y0, x1, y1, pixel corners) and, from masks, its pixels."""

    name: str
    box: tuple[int, int, int, int]
    mask: np.ndarray | None = None


class ObjectSource:
    """Looks up the objects of a photo in a boxes JSON or a masks folder; `min_area` is a share of the photo."""

    def __init__(self, path: str | Path, min_area: float = 0.01) -> None:
        self.path = Path(path)
        self.min_area = min_area
        self._boxes: dict[str, list[tuple[str, tuple[float, float, float, float]]]] | None = None
        self._classes: list[str] = []
        if self.path.is_file():
            self._boxes = self._read_coco(self.path)
        elif self.path.is_dir():
            names = self.path.parent / "classes.txt"
            if names.is_file():
                self._classes = names.read_text().splitlines()
        else:
            raise MissingFileError(f"{self.path}: no such boxes JSON or masks folder")

    @property
    def has_masks(self) -> bool:
        return self._boxes is None

    @staticmethod
    def _read_coco(path: Path) -> dict[str, list]:
        try:
            data = json.loads(path.read_text())
            categories = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
            files = {image["id"]: Path(image["file_name"]).name for image in data["images"]}
            boxes: dict[str, list] = {}
            for ann in data["annotations"]:
                name = f"{categories.get(ann.get('category_id'), 'object')}-{ann.get('id', len(boxes))}"
                boxes.setdefault(files[ann["image_id"]], []).append((name, tuple(ann["bbox"])))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise InvalidFileError(f"{path}: not a COCO-style boxes file ({type(exc).__name__}: {exc})") from None
        return boxes

    def objects(self, photo: Path, size: tuple[int, int]) -> list[PhotoObject]:
        """The objects of `photo` (of `size` = width, height) large enough to index; [] when it has none."""
        width, height = size
        found: list[PhotoObject] = []
        if self._boxes is not None:
            for name, (x, y, w, h) in self._boxes.get(photo.name, []):
                box = (max(0, int(x)), max(0, int(y)), min(width, int(round(x + w))), min(height, int(round(y + h))))
                found.append(PhotoObject(name, box))
        else:
            mask_path = self.path / f"{photo.stem}.png"
            if not mask_path.is_file():
                return []
            labels = np.asarray(open_image(mask_path, mode="L"))
            if labels.shape != (height, width):
                raise ImageError(mask_path, f"mask is {labels.shape[1]}x{labels.shape[0]}, photo is {width}x{height}")
            for value in np.unique(labels):
                if value == 0:
                    continue
                pixels = labels == value
                ys, xs = np.nonzero(pixels)
                name = self._classes[value] if value < len(self._classes) else f"label-{value}"
                found.append(PhotoObject(name, (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1),
                                         pixels))
        minimum = self.min_area * width * height
        return [o for o in found if (o.box[2] - o.box[0]) * (o.box[3] - o.box[1]) >= max(1.0, minimum)]


def crop_object(photo: Image.Image, obj: PhotoObject, mode: str = "boxes") -> Image.Image:
    """The object's box cut from `photo`; in `masks` mode pixels outside its mask become white."""
    if mode not in MODES:
        raise ValueError(f"object mode must be one of {MODES}, got {mode!r}")
    if mode == "masks":
        if obj.mask is None:
            raise ValueError(f"object {obj.name!r} has no mask (masks mode needs a masks folder)")
        array = np.asarray(photo).copy()
        array[~obj.mask] = 255
        photo = Image.fromarray(array, mode=photo.mode)
    return photo.crop(obj.box)
