"""Robust image I/O: decode any photo a user throws at us into RGB/L, tensors <-> PIL, atomic saves.

Every failure to read a file is an `ImageError(path, reason)` whose message names the file, so a batch job
can report it in one line and carry on.
"""
from __future__ import annotations

import glob
import os
import re
import struct
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Union

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from linedraw.errors import LinedrawError

PathLike = Union[str, "os.PathLike[str]"]

#: Largest image `open_image` decodes by default (128 Mpx, below Pillow's own bomb limit of ~179 Mpx).
#: A few-hundred-byte PNG can declare a gigapixel canvas; refusing it before decoding keeps memory safe.
DEFAULT_MAX_PIXELS = 2**27

#: File extensions picked up when walking directories or expanding globs (files named explicitly are
#: always tried, whatever their extension).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
     ".pbm", ".pnm", ".tga", ".ico", ".jp2", ".j2k"}
)

_GLOB_MAGIC = re.compile(r"[*?[]")


def display_path(path: PathLike) -> str:
    """`path` as printable text: undecodable bytes of non-UTF-8 file names become `\\xNN` escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


class ImageError(LinedrawError):
    """An image file that cannot be used; `str()` is `"<path>: <reason>"`."""

    def __init__(self, path: PathLike, reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"{display_path(self.path)}: {reason}")


class ImageTooLargeError(ImageError):
    """An image over the caller's pixel limit (a possible decompression bomb).

    `what` says how large it is and `limit` is the limit, so a command can name its own option in the message.
    """

    def __init__(self, path: PathLike, what: str, limit: int) -> None:
        self.what, self.limit = what, limit
        super().__init__(path, f"{what}, over the limit of {limit} pixels ({_BOMB_HINT})")


_BOMB_HINT = "max_pixels; a possible decompression bomb: raise the limit only for trusted files"
#: Pillow's bomb limit is one global; raising it for one call is done under this lock and undone after.
_PILLOW_LIMIT_LOCK = threading.Lock()


def normalize_mode(image: Image.Image, mode: str = "RGB") -> Image.Image:
    """Convert any Pillow mode to "RGB" or "L": transparency is composited on white, 16-bit and float
    images are rescaled to 8 bits, palette/CMYK/YCbCr/1-bit are converted."""
    if mode not in ("RGB", "L"):
        raise ValueError(f"mode must be 'RGB' or 'L', got {mode!r}")
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = _high_depth_to_l(image)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    if image.mode != mode:
        image = image.convert(mode)
    return image


def _high_depth_to_l(image: Image.Image) -> Image.Image:
    """16-bit integer images map 0..65535 to 0..255; float images are taken as [0, 1] (or [0, 255])."""
    array = np.asarray(image, dtype=np.float64)
    if image.mode == "F":
        scale = 1.0 if array.size == 0 or np.nanmax(array) <= 1.0 else 255.0
    else:
        scale = 65535.0
    array = np.clip(np.nan_to_num(array / scale), 0.0, 1.0)
    return Image.fromarray(np.round(array * 255).astype(np.uint8), mode="L")


def open_image(
    path: PathLike,
    mode: str = "RGB",
    max_pixels: int | None = DEFAULT_MAX_PIXELS,
    warn: Callable[[str], object] | None = None,
) -> Image.Image:
    """Decode `path` fully into an upright (EXIF orientation applied) "RGB" or "L" image.

    Raises `ImageError` naming the file for missing/empty/corrupt/truncated/non-image files, and its subclass
    `ImageTooLargeError` for images over `max_pixels` (None = Pillow's own limit only). A `max_pixels` above
    Pillow's own limit (`Image.MAX_IMAGE_PIXELS`) raises that limit for this file, so trusted huge photos
    open. Only the first frame of animations and multi-page files is decoded; `warn(line)`, when given, is
    told so (one line naming the file).
    """
    path_str = os.fspath(path)
    try:
        size = os.stat(path_str).st_size
    except FileNotFoundError:
        raise ImageError(path_str, "no such file") from None
    except OSError as exc:
        raise ImageError(path_str, f"cannot read: {exc.strerror or exc}") from None
    if os.path.isdir(path_str):
        raise ImageError(path_str, "is a directory, not an image")
    if size == 0:
        raise ImageError(path_str, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We enforce our own limit below; Pillow's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with _pillow_open(path_str, max_pixels) as image:
                width, height = image.size
                if max_pixels is not None and width * height > max_pixels:
                    raise ImageTooLargeError(
                        path_str, f"{width}x{height} image has {width * height} pixels", max_pixels
                    )
                frames = getattr(image, "n_frames", 1)
                if frames > 1 and warn is not None:
                    warn(f"{display_path(path_str)}: has {frames} frames; only the first is used")
                image.load()
                image = ImageOps.exif_transpose(image)
                return normalize_mode(image, mode)
    except ImageError:
        raise
    except Image.DecompressionBombError as exc:  # over Pillow's limit, hence over `max_pixels` too
        if max_pixels is None:
            raise ImageError(path_str, f"decompression bomb refused: {exc}") from None
        raise ImageTooLargeError(path_str, f"Pillow refused it ({exc})", max_pixels) from None
    except UnidentifiedImageError:
        raise ImageError(path_str, f"not an image file (or an unsupported format), {size} bytes") from None
    except PermissionError:
        raise ImageError(path_str, "permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error) as exc:
        # Pillow signals truncated/corrupt data with any of these, depending on the format plugin.
        raise ImageError(path_str, f"corrupt or truncated image: {exc}") from None


def _pillow_open(path: str, max_pixels: int | None) -> Image.Image:
    """`Image.open`, with Pillow's global bomb limit raised for the header read when `max_pixels` exceeds it.

    Pillow refuses images over twice `Image.MAX_IMAGE_PIXELS` while opening them; our own check (against
    `max_pixels`) follows at once, so the temporary raise lets exactly what the caller trusts through.
    """
    pillow_limit = Image.MAX_IMAGE_PIXELS
    if max_pixels is None or pillow_limit is None or max_pixels <= 2 * pillow_limit:
        return Image.open(path)
    with _PILLOW_LIMIT_LOCK:
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = pillow_limit


def to_tensor(image: Image.Image) -> torch.Tensor:
    """PIL image -> (C, H, W) float tensor in [0, 1]; "L" gives C=1, other modes are normalised to RGB."""
    if image.mode not in ("L", "RGB"):
        image = normalize_mode(image, "RGB")
    array = np.asarray(image, dtype=np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def to_pil(tensor: torch.Tensor) -> Image.Image:
    """(1|3, H, W) or (H, W) float tensor in [0, 1] -> "L" or "RGB" PIL image (values clamped and rounded)."""
    if tensor.ndim == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.ndim != 3 or tensor.shape[0] not in (1, 3):
        raise ValueError(f"expected a (1|3, H, W) or (H, W) tensor, got shape {tuple(tensor.shape)}")
    array = tensor.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().permute(1, 2, 0).numpy()
    if array.shape[2] == 1:
        return Image.fromarray(array[:, :, 0], mode="L")
    return Image.fromarray(array, mode="RGB")


def save_image(image: Image.Image | torch.Tensor, path: PathLike, format: str | None = None, **options) -> None:
    """Write `image` to `path` atomically: a temp file in the same directory, then `os.replace`.

    A crash mid-write leaves either the old file or none, never a half-written one. `format` defaults to the
    one implied by the extension; `options` go to `PIL.Image.save` (e.g. quality=95). WebP has no grey-scale
    mode, so an "L" image is stored as RGB with three equal channels (it reads back as "RGB").
    """
    if isinstance(image, torch.Tensor):
        image = to_pil(image)
    path_str = os.fspath(path)
    if format is None:
        extension = os.path.splitext(path_str)[1].lower()
        format = Image.registered_extensions().get(extension)
        if format is None:
            raise ValueError(f"cannot tell the image format from {display_path(path_str)!r}; pass format=")
    if format.upper() in ("JPEG", "WEBP") and image.mode not in ("L", "RGB"):
        image = normalize_mode(image, "RGB")
    write_atomic(path_str, lambda handle: image.save(handle, format=format, **options))


def write_atomic(path: PathLike, write: Callable[[BinaryIO], object]) -> None:
    """Call `write(handle)` on a temp file beside `path` (creating its folder), then rename it to `path`.

    Readers see the old file or the complete new one, never a partial one; on error the temp file is removed.
    The file gets the usual permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    def via_handle(tmp: str) -> None:
        with open(tmp, "wb") as handle:
            write(handle)

    write_atomic_path(path, via_handle)


#: Names of `write_atomic_path`'s temp files: `.<target name>.<mkstemp's 8 random characters>.tmp`.
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
#: Temp files younger than this may belong to a write still in flight, so `remove_stale_temp_files` keeps them.
STALE_TEMP_AGE = 600.0


def write_atomic_path(path: PathLike, write: Callable[[str], object]) -> None:
    """Like `write_atomic`, for writers that want a file name (Faiss, numpy, safetensors): `write(temp_path)`."""
    path_str = os.fspath(path)
    directory = os.path.dirname(path_str) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(path_str), suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path_str)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def _temp_prefix(path: str) -> str:
    return "." + os.path.basename(path) + "."


def remove_stale_temp_files(directory: PathLike, min_age: float = STALE_TEMP_AGE) -> list[Path]:
    """Delete the temp files a killed `write_atomic` left in `directory` (not recursive); returns them.

    Only names of the writer's own pattern (`TEMP_NAME`) older than `min_age` seconds are touched, so a write
    still in progress in another process, and any other file, is left alone.
    """
    removed = []
    cutoff = time.time() - min_age
    try:
        entries = list(os.scandir(directory))
    except OSError:  # not there (yet), or unreadable: nothing of ours to clean
        return removed
    for entry in entries:
        if not TEMP_NAME.fullmatch(entry.name):
            continue
        try:
            if entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:  # gone meanwhile, or not ours to delete
            continue
    return removed


def check_writable(path: PathLike) -> None:
    """Raise `LinedrawError` naming `path` unless a file can be written there (checked by writing a probe).

    Call it before long work whose result goes to `path`, so a typo fails at once rather than at the end: the
    folder `path` goes in must exist (a missing one is more likely a typo than a wish) and be writable, and
    `path` itself must not be a directory.
    """
    path_str = os.fspath(path)
    if os.path.isdir(path_str):
        raise LinedrawError(f"cannot write {display_path(path_str)}: it is a directory")
    parent = os.path.dirname(os.path.abspath(path_str))
    if not os.path.isdir(parent):
        problem = "is not a directory" if os.path.exists(parent) else "does not exist"
        raise LinedrawError(f"cannot write {display_path(path_str)}: the folder {display_path(parent)} {problem}")
    try:
        fd, probe = tempfile.mkstemp(dir=parent, prefix=_temp_prefix(path_str), suffix=".tmp")
    except OSError as exc:
        raise LinedrawError(
            f"cannot write {display_path(path_str)}: {display_path(parent)} is not writable ({exc.strerror or exc})"
        ) from None
    os.close(fd)
    os.unlink(probe)


def write_text_atomic(path: PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically (see `write_atomic`)."""
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def list_images(inputs: Iterable[PathLike], extensions: Iterable[str] = IMAGE_EXTENSIONS) -> list[tuple[Path, Path]]:
    """Expand files, directories (recursively) and glob patterns into `(path, relative_path)` pairs.

    `relative_path` is where the file sits below the directory (or the glob's fixed prefix) it was found in, so
    outputs can mirror the input tree. Walks skip hidden files and folders and keep only `extensions` (lower case,
    default `IMAGE_EXTENSIONS`); files named explicitly, and inputs that do not exist, are passed through so that
    opening them reports the problem. Duplicates are dropped; order is stable (sorted per input).
    """
    found: list[tuple[Path, Path]] = []
    seen: set[str] = set()
    extensions = frozenset(extensions)

    def add(path: Path, relative: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            found.append((path, relative))

    for item in inputs:
        text = os.fspath(item)
        path = Path(text)
        if path.is_dir():
            for file in _walk(path, extensions):
                add(file, file.relative_to(path))
        elif path.exists() or not _has_magic(text):
            add(path, Path(path.name))
        else:
            base = _glob_base(text)
            for match in sorted(glob.glob(text, recursive=True)):
                match_path = Path(match)
                if match_path.is_dir():
                    for file in _walk(match_path, extensions):
                        add(file, file.relative_to(base))
                elif _is_image_name(match_path, extensions):
                    add(match_path, match_path.relative_to(base))
    return found


def _has_magic(text: str) -> bool:
    return _GLOB_MAGIC.search(text) is not None


def _is_image_name(path: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> bool:
    return path.suffix.lower() in extensions and not path.name.startswith(".")


def _walk(root: Path, extensions: frozenset[str] = IMAGE_EXTENSIONS) -> list[Path]:
    files = []
    for directory, subdirs, names in os.walk(root):
        subdirs[:] = sorted(d for d in subdirs if not d.startswith("."))
        files += [Path(directory) / n for n in sorted(names) if _is_image_name(Path(n), extensions)]
    return files


def _glob_base(pattern: str) -> Path:
    """The longest leading run of path components of `pattern` without glob characters."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts[:-1]:
        if _has_magic(part):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")
