"""Checks an image before it goes into a shard: the bytes stay as they are, the check decodes them once."""

from __future__ import annotations

import io
import warnings

from PIL import Image

# PIL's own decompression-bomb threshold (about 89.5 megapixels); a config may lower it.
DEFAULT_MAX_PIXELS = 89_478_485


class ImageRejected(Exception):
    """The image cannot go into a shard; ``code`` is a short stable reason, the message the detail."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def check_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Return (width, height) of a fully decodable JPEG, or raise ImageRejected saying why not."""
    if not data:
        raise ImageRejected("not-an-image", "file is empty")
    try:
        with warnings.catch_warnings():
            # Our own pixel check below is the one that counts; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as err:
        raise ImageRejected("too-many-pixels", str(err)) from err
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError… for garbage
        raise ImageRejected("not-an-image", f"cannot identify image: {err}") from err
    width, height = img.size
    if img.format != "JPEG":
        raise ImageRejected("not-jpeg", f"image is {img.format}, shards hold JPEG bytes unchanged")
    # Checked from the header, before decoding: a bomb must be refused without allocating it.
    if width * height > max_pixels:
        raise ImageRejected("too-many-pixels", f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as err:  # truncated or corrupt entropy data
        raise ImageRejected("corrupt-image", f"JPEG does not decode: {err}") from err
    return width, height
