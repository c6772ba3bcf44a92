"""Rebuild samples/lineart.png: one sample photo as the grey drawing, thinned, at a fixed pen width, and as SVG.

    python samples/make_lineart.py [PHOTO]          # default: samples/photos/coffee.jpg, checkpoint contour

The SVG panel is the SVG file itself rasterised by resvg (`pip install resvg-py`), so the picture shows what an
editor or plotter gets, not a re-render of our raster.
"""
from __future__ import annotations

import io
import sys
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent
PANEL_WIDTH = 320
LABEL_HEIGHT = 22


def panels(photo: Path) -> list[tuple[str, Image.Image]]:
    """(label, image) for the photo and each output kind, all at the photo's size."""
    import resvg_py

    import linedraw
    from linedraw.images import open_image

    image = open_image(photo)
    grey = linedraw.load("contour")(image)
    thin = linedraw.load("contour", thin=True)(image)
    pen = linedraw.load("contour", stroke_width=2)(image)
    svg = linedraw.load("contour", stroke_width=2).to_svg([image])[0]
    rendered = Image.open(io.BytesIO(bytes(resvg_py.svg_to_bytes(svg_string=svg, background="white")))).convert("L")
    return [("photo", image), ("grey drawing", grey), ("--thin", thin), ("--stroke-width 2", pen),
            (f"--format svg ({len(svg.encode()) // 1024} KB, rasterised)", rendered)]


def main(photo: Path = HERE / "photos" / "coffee.jpg", out: Path = HERE / "lineart.png") -> int:
    items = panels(photo)
    w, h = items[0][1].size
    height = round(PANEL_WIDTH * h / w)
    sheet = Image.new("RGB", (PANEL_WIDTH * len(items), height + LABEL_HEIGHT), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (label, image) in enumerate(items):
        sheet.paste(image.convert("RGB").resize((PANEL_WIDTH, height), Image.Resampling.LANCZOS),
                    (i * PANEL_WIDTH, LABEL_HEIGHT))
        draw.text((i * PANEL_WIDTH + 6, 4), label, fill="black")
    sheet.save(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(*(Path(a) for a in sys.argv[1:2])))
