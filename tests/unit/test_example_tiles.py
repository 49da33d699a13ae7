"""The example grid: each image scaled into its tile, region boxes drawn where the regions are, text under it."""

from __future__ import annotations

import io

from PIL import Image

from vsa_dist.examples import COLUMNS, LINE_HEIGHT, TILE, render_grid, render_tiles


def jpeg(width: int, height: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (width, height), "white").save(out, format="JPEG", quality=95)
    return out.getvalue()


def reddish(pixel) -> bool:  # the grid is a JPEG: a 2-pixel line's colour bleeds into the white beside it
    r, g, b = pixel
    return r > g + 60 and r > b + 60


def white(pixel) -> bool:
    return min(pixel) > 230


def test_boxes_are_scaled_with_the_image_into_the_tile():
    # a 100 x 50 image stretched into a 224 x 224 tile: x scales by 2.24, y by 4.48; the second tile is the one checked
    tiles = [(jpeg(80, 80), [("first", "black")], []),
             (jpeg(100, 50), [("a dog", (20, 60, 160)), ("1: a red ball", "#d62728")], [([10, 10, 50, 40], "#d62728")])]
    grid = Image.open(io.BytesIO(render_tiles(tiles))).convert("RGB")
    assert grid.size == (COLUMNS * TILE, TILE + 6 + 2 * LINE_HEIGHT)
    left, top, right, bottom = TILE + 10 * 2.24, 10 * 4.48, TILE + 50 * 2.24, 40 * 4.48
    middle_y, middle_x = int((top + bottom) / 2), int((left + right) / 2)
    assert reddish(grid.getpixel((int(left) + 1, middle_y))) and reddish(grid.getpixel((int(right) - 2, middle_y)))
    assert reddish(grid.getpixel((middle_x, int(top) + 1))) and reddish(grid.getpixel((middle_x, int(bottom) - 2)))
    assert white(grid.getpixel((middle_x, middle_y)))  # inside the box the image is untouched
    assert white(grid.getpixel((int(left) - 6, middle_y))) and white(grid.getpixel((middle_x, int(bottom) + 6)))
    assert white(grid.getpixel((20, 80)))  # the first tile has no box


def test_rows_are_as_tall_as_their_longest_text():
    long = "a man in a red shirt " * 6  # wraps to several lines
    tiles = [(jpeg(60, 60), [(long, "black")], [])] + [(jpeg(60, 60), [("short", "black")], [])] * COLUMNS
    grid = Image.open(io.BytesIO(render_tiles(tiles)))
    first_row = TILE + 6 + LINE_HEIGHT * 4  # the long text takes four lines of 34 characters
    assert grid.size == (COLUMNS * TILE, first_row + TILE + 6 + LINE_HEIGHT)
    # the plain grid (caption and reference) cuts each text to three lines
    grid = Image.open(io.BytesIO(render_grid([(jpeg(60, 60), long, long)])))
    assert grid.size == (COLUMNS * TILE, TILE + 6 + LINE_HEIGHT * 6)
