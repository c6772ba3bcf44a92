"""Rebuild samples/sheet.png: each sample photo beside its drawing, in justified rows (run after converting the samples).

    linedraw convert samples/photos -o samples/drawings --checkpoint contour && python samples/make_sheet.py

Every row is exactly the sheet's width: the pairs of a row share one height, and each image's width follows its
own aspect ratio, so a narrow photo takes a narrow slot instead of leaving an empty column. Pairs keep their
(sorted) order; they are split into rows so that the row heights stay as close to ROW_HEIGHT as possible.
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
SHEET_WIDTH = 1600
ROW_HEIGHT = 240
GAP_IN_PAIR = 8  # between a photo and its drawing
GAP_BETWEEN_PAIRS = 24
GAP_BETWEEN_ROWS = 12


def row_height(aspects: list[float], width: int = SHEET_WIDTH) -> float:
    """The height at which pairs with these summed aspect ratios (width / height) fill a row of `width`."""
    gaps = GAP_IN_PAIR * len(aspects) + GAP_BETWEEN_PAIRS * (len(aspects) - 1)
    return (width - gaps) / sum(aspects)


def split_rows(aspects: list[float], width: int = SHEET_WIDTH, target: float = ROW_HEIGHT) -> list[int]:
    """Row lengths (consecutive pairs per row) minimising the summed squared distance of row heights to `target`."""
    n = len(aspects)
    best: list[tuple[float, int]] = [(0.0, 0)] + [(float("inf"), 0)] * n  # best[i]: cost of pairs[:i], last row len
    for end in range(1, n + 1):
        for start in range(end):
            cost = best[start][0] + (row_height(aspects[start:end], width) - target) ** 2
            if cost < best[end][0]:
                best[end] = (cost, end - start)
    lengths, end = [], n
    while end:
        lengths.append(best[end][1])
        end -= best[end][1]
    return lengths[::-1]


def layout_row(sizes: list[tuple[int, int]], width: int = SHEET_WIDTH) -> tuple[int, list[tuple[int, int]]]:
    """Height and (x, width) of each image of a row of pairs given as consecutive (w, h) sizes, filling `width`."""
    aspects = [sizes[i][0] / sizes[i][1] + sizes[i + 1][0] / sizes[i + 1][1] for i in range(0, len(sizes), 2)]
    height = row_height(aspects, width)
    slots, x = [], 0.0
    for i, (w, h) in enumerate(sizes):
        x += (GAP_BETWEEN_PAIRS if i % 2 == 0 else GAP_IN_PAIR) if i else 0
        left, x = round(x), x + w / h * height
        slots.append((left, round(x) - left))
    last_left, _ = slots[-1]
    slots[-1] = (last_left, width - last_left)  # absorb rounding so every row ends at the same pixel
    return round(height), slots


def main(photos: Path = HERE / "photos", drawings: Path = HERE / "drawings", out: Path = HERE / "sheet.png") -> int:
    from linedraw.images import save_image

    pairs = [(p, drawings / f"{p.stem}.png") for p in sorted(photos.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    missing = [str(d) for _, d in pairs if not d.is_file()]
    if missing:
        print(f"error: drawings missing (convert the samples first): {', '.join(missing)}", file=sys.stderr)
        return 1
    images = [ImageOps.exif_transpose(Image.open(path)).convert("RGB") for pair in pairs for path in pair]
    aspects = [images[i].width / images[i].height + images[i + 1].width / images[i + 1].height
               for i in range(0, len(images), 2)]
    rows, start = [], 0
    for length in split_rows(aspects):
        rows.append(images[2 * start : 2 * (start + length)])
        start += length
    layouts = [layout_row([im.size for im in row]) for row in rows]
    total = sum(height for height, _ in layouts) + GAP_BETWEEN_ROWS * (len(rows) - 1)
    sheet = Image.new("RGB", (SHEET_WIDTH, total), "white")
    y = 0
    for row, (height, slots) in zip(rows, layouts):
        for image, (x, width) in zip(row, slots):
            sheet.paste(image.resize((width, height), Image.Resampling.LANCZOS), (x, y))
        y += height + GAP_BETWEEN_ROWS
    save_image(sheet, out)
    print(f"wrote {out} ({len(pairs)} pairs in {len(rows)} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
