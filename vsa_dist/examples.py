"""Example captions people can look at: test images with the generated caption above a reference,
drawn into one JPEG grid and logged to MLflow beside a JSON of the same examples (driver side)."""

from __future__ import annotations

import io
import json
import tempfile
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import mlflow
from PIL import Image, ImageDraw, ImageFont

from vsa_dist.data.images import open_rgb
from vsa_dist.data.manifests import source_shards
from vsa_dist.data.shards import jpegs_by_id

TILE, COLUMNS = 224, 5


def pick(count: int, image_ids: Sequence[str]) -> list[int]:
    """Indices of ``count`` images spread evenly over the split in image-id order: the same images every run,
    whatever order the feature shards hold them in (a re-extraction writes them in arrival order)."""
    total = len(image_ids)
    if count <= 0 or total <= 0:
        return []
    by_id = sorted(range(total), key=lambda i: image_ids[i])
    step = total / min(count, total)
    return [by_id[int(i * step)] for i in range(min(count, total))]


Line = tuple[str, Any]  # text and its colour (a name, "#rrggbb" or an RGB tuple)
Box = tuple[list[float], Any]  # [x0, y0, x1, y1] in the image's pixels as shown, and its colour

CAPTION_COLOUR, REFERENCE_COLOUR, LINE_HEIGHT, WRAP = (20, 60, 160), (110, 110, 110), 15, 34


def render_tiles(tiles: list[tuple[bytes, list[Line], list[Box]]]) -> bytes:
    """(JPEG, coloured lines of text under it, coloured boxes drawn on it) per tile → one JPEG grid; each row of
    tiles is as tall as its longest text."""
    font = ImageFont.load_default(size=13)
    wrapped = [[(part, colour) for text, colour in lines for part in textwrap.wrap(text, WRAP)]
               for _, lines, _ in tiles]
    rows = [wrapped[start:start + COLUMNS] for start in range(0, len(tiles), COLUMNS)]
    heights = [TILE + 6 + LINE_HEIGHT * max(len(lines) for lines in row) for row in rows]
    canvas = Image.new("RGB", (COLUMNS * TILE, max(sum(heights), 1)), "white")
    draw = ImageDraw.Draw(canvas)
    for n, ((jpeg, _, boxes), lines) in enumerate(zip(tiles, wrapped)):
        x, y = (n % COLUMNS) * TILE, sum(heights[: n // COLUMNS])
        image = open_rgb(jpeg)
        sx, sy = TILE / image.width, TILE / image.height
        canvas.paste(image.resize((TILE, TILE)), (x, y))
        for (x0, y0, x1, y1), colour in boxes:
            draw.rectangle((x + x0 * sx, y + y0 * sy, x + x1 * sx - 1, y + y1 * sy - 1), outline=colour, width=2)
        for k, (line, colour) in enumerate(lines):
            draw.text((x + 4, y + TILE + 3 + LINE_HEIGHT * k), line, fill=colour, font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=85)
    return out.getvalue()


def render_grid(tiles: list[tuple[bytes, str, str]]) -> bytes:
    """(JPEG, generated caption, a reference) per tile → one JPEG grid (each text cut to three lines)."""
    def cut(text: str) -> str:
        return " ".join(textwrap.wrap(text, WRAP)[:3])

    return render_tiles([(jpeg, [(cut(generated), CAPTION_COLOUR), (cut("ref: " + reference), REFERENCE_COLOUR)], [])
                         for jpeg, generated, reference in tiles])


def log_examples(features_manifest: dict[str, Any], split: dict[str, Any], captions: list[str], count: int,
                 features_dir: str | Path) -> list[dict[str, Any]]:
    """Log ``examples.json`` (and ``examples.jpg`` when the source images can be found) to the active run."""
    chosen = pick(count, split["image_ids"])
    examples = [{"image_id": split["image_ids"][i], "file_name": split["file_names"][i], "caption": captions[i],
                 "references": split["references"][i]} for i in chosen]
    if not examples:
        return examples
    with tempfile.TemporaryDirectory(prefix="vsa-examples-") as scratch:
        (Path(scratch) / "examples.json").write_text(json.dumps(examples, indent=1, ensure_ascii=False))
        shards = source_shards(features_manifest, features_dir)
        if shards is not None:
            jpegs = jpegs_by_id(shards, [split.get("split", "test")], {e["image_id"] for e in examples})
            tiles = [
                (jpegs[e["image_id"]], e["caption"], e["references"][0]) for e in examples if e["image_id"] in jpegs
            ]
            if tiles:
                (Path(scratch) / "examples.jpg").write_bytes(render_grid(tiles))
        else:
            print("examples: the source image shards are not found; logging captions without images", flush=True)
        mlflow.log_artifacts(scratch, artifact_path="examples")
    return examples
