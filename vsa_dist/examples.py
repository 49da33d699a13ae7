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

from PIL import Image, ImageDraw, ImageFont

from vsa_dist import storage
from vsa_dist.data.images import open_rgb
from vsa_dist.data.shards import jpegs_by_id

TILE, TEXT_HEIGHT, COLUMNS = 224, 96, 5


def source_shards(features_manifest: dict[str, Any], features_dir: str | Path) -> str | None:
    """The image shards the features were made from, if they are still where they were (or beside them)."""
    recorded = str(features_manifest.get("source", {}).get("shards", ""))
    if not recorded:
        return None
    beside = storage.join(storage.parent(features_dir), recorded.rstrip("/").rsplit("/", 1)[-1])
    for candidate in (recorded, beside):
        if storage.exists(storage.join(candidate, "manifest.json")):
            return candidate
    return None


def pick(count: int, image_ids: Sequence[str]) -> list[int]:
    """Indices of ``count`` images spread evenly over the split in image-id order: the same images every run,
    whatever order the feature shards hold them in (a re-extraction writes them in arrival order)."""
    total = len(image_ids)
    if count <= 0 or total <= 0:
        return []
    by_id = sorted(range(total), key=lambda i: image_ids[i])
    step = total / min(count, total)
    return [by_id[int(i * step)] for i in range(min(count, total))]


def render_grid(tiles: list[tuple[bytes, str, str]]) -> bytes:
    """(JPEG, generated caption, a reference) per tile → one JPEG grid."""
    font = ImageFont.load_default(size=13)
    rows = (len(tiles) + COLUMNS - 1) // COLUMNS
    canvas = Image.new("RGB", (COLUMNS * TILE, rows * (TILE + TEXT_HEIGHT)), "white")
    draw = ImageDraw.Draw(canvas)
    for n, (jpeg, generated, reference) in enumerate(tiles):
        x, y = (n % COLUMNS) * TILE, (n // COLUMNS) * (TILE + TEXT_HEIGHT)
        canvas.paste(open_rgb(jpeg).resize((TILE, TILE)), (x, y))
        lines = [(line, (20, 60, 160)) for line in textwrap.wrap(generated, 34)[:3]]
        lines += [(line, (110, 110, 110)) for line in textwrap.wrap("ref: " + reference, 34)[:3]]
        for k, (line, colour) in enumerate(lines):
            draw.text((x + 4, y + TILE + 3 + 15 * k), line, fill=colour, font=font)
    out = io.BytesIO()
    canvas.save(out, format="JPEG", quality=85)
    return out.getvalue()


def log_examples(features_manifest: dict[str, Any], split: dict[str, Any], captions: list[str], count: int,
                 features_dir: str | Path) -> list[dict[str, Any]]:
    """Log ``examples.json`` (and ``examples.jpg`` when the source images can be found) to the active run."""
    import mlflow

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
