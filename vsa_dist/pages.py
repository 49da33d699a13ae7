"""What the suite's HTML pages share (the report, ``vsa caption --html``, ``vsa search --html``): one colour per
region, and images inline as thumbnails, so that a page stands alone."""

from __future__ import annotations

import base64
import io

from vsa_dist.data.images import open_rgb

WHOLE_IMAGE_COLOUR = "#9e9e9e"
PALETTE = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#9a6324", "#469990",
           "#800000", "#808000", "#000075", "#bfef45", "#fabed4", "#dcbeff", "#aaffc3", "#ffd8b1", "#00a087",
           "#ffe119", "#000000"]


def colour(region: int) -> str:
    """Region 0 is the whole image (grey, no box); regions 1..R take the palette."""
    return WHOLE_IMAGE_COLOUR if region == 0 else PALETTE[(region - 1) % len(PALETTE)]


def thumbnail(jpeg: bytes, size: int) -> str:
    """The image as shown (EXIF orientation applied, as its boxes are), within the pixel limit, as a data URI."""
    image = open_rgb(jpeg)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
