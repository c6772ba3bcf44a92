"""Rebuild samples/sheet.png: each sample photo beside its drawing, in rows (run after converting the samples).

    linedraw convert samples/photos -o samples/drawings --checkpoint contour && python samples/make_sheet.py
"""
from __future__ import annotations

import sys
from pathlib import Path

from PIL import Image, ImageOps

HERE = Path(__file__).resolve().parent
ROW_HEIGHT = 240


def main(photos: Path = HERE / "photos", drawings: Path = HERE / "drawings", out: Path = HERE / "sheet.png") -> int:
    pairs = [(p, drawings / f"{p.stem}.png") for p in sorted(photos.iterdir()) if p.suffix.lower() in (".jpg", ".png")]
    missing = [str(d) for _, d in pairs if not d.is_file()]
    if missing:
        print(f"error: drawings missing (convert the samples first): {', '.join(missing)}", file=sys.stderr)
        return 1
    rows = []
    for photo, drawing in pairs:
        a = ImageOps.contain(Image.open(photo).convert("RGB"), (10_000, ROW_HEIGHT))
        b = ImageOps.contain(Image.open(drawing).convert("RGB"), (10_000, ROW_HEIGHT))
        row = Image.new("RGB", (a.width + b.width + 8, ROW_HEIGHT), "white")
        row.paste(a, (0, 0))
        row.paste(b, (a.width + 8, 0))
        rows.append(row)
    half = (len(rows) + 1) // 2
    columns = [rows[:half], rows[half:]]
    widths = [max(r.width for r in col) for col in columns if col]
    sheet = Image.new("RGB", (sum(widths) + 16 * (len(widths) - 1), half * (ROW_HEIGHT + 8) - 8), "white")
    x = 0
    for col, width in zip(columns, widths):
        for i, row in enumerate(col):
            sheet.paste(row, (x, i * (ROW_HEIGHT + 8)))
        x += width + 16
    sheet.save(out)
    print(f"wrote {out} ({len(pairs)} pairs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
