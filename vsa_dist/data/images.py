"""Every image this suite decodes goes through here: a pixel limit read from the header before any decoding,
and one orientation (EXIF applied, as a person sees the photo) for sizes, features, boxes and thumbnails.

Shard building checks an image once (its bytes stay as they are); ``vsa features``, ``vsa caption``, the
served captioner, the report and the example grids decode with the same limit.
"""

from __future__ import annotations

import io
import threading
import warnings
from pathlib import Path

from PIL import Image, ImageOps

# PIL's own decompression-bomb threshold (about 89.5 megapixels); a config may lower or raise it.
DEFAULT_MAX_PIXELS = 89_478_485
# EXIF orientations that turn the stored image by 90 degrees: width and height swap when it is shown.
_TRANSPOSED = {5, 6, 7, 8}
_EXIF_ORIENTATION = 0x0112
_PIL_LIMIT = threading.Lock()


class ImageRejected(Exception):
    """The image cannot be used; ``code`` is a short stable reason, the message the detail."""

    def __init__(self, code: str, detail: str):
        super().__init__(detail)
        self.code = code


def _open(data: bytes) -> Image.Image:
    """The image with only its header read. PIL's own bomb check is off for this call: ``max_pixels`` is the
    limit that counts, and a user may raise it above PIL's (which would otherwise refuse at twice its default)."""
    if not data:
        raise ImageRejected("not-an-image", "file is empty")
    with _PIL_LIMIT, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            return Image.open(io.BytesIO(data))
        except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError… for garbage
            raise ImageRejected("not-an-image", f"cannot identify image: {err}") from err
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def _shown_size(img: Image.Image) -> tuple[int, int]:
    width, height = img.size
    try:
        orientation = img.getexif().get(_EXIF_ORIENTATION)
    except Exception:  # a damaged EXIF block: the pixels are still the image
        orientation = None
    return (height, width) if orientation in _TRANSPOSED else (width, height)


def _check_pixels(img: Image.Image, max_pixels: int) -> None:
    # From the header, before decoding: a bomb must be refused without allocating it.
    width, height = img.size
    if width * height > max_pixels:
        raise ImageRejected("too-many-pixels", f"{width}x{height} = {width * height} pixels > limit {max_pixels} "
                                               "(raise it with --max-pixels)")


def _checked(data: bytes, max_pixels: int, jpeg_only: bool) -> Image.Image:
    img = _open(data)
    if jpeg_only and img.format != "JPEG":
        raise ImageRejected("not-jpeg", f"image is {img.format}, shards hold JPEG bytes unchanged")
    _check_pixels(img, max_pixels)
    return img


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, jpeg_only: bool = False) -> tuple[int, int]:
    """(width, height) as shown (EXIF orientation applied) of an image within the pixel limit, from its header
    alone; ImageRejected says why not. Cheap: nothing is decoded."""
    return _shown_size(_checked(data, max_pixels, jpeg_only))


def check_jpeg(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) as shown of a fully decodable JPEG within the pixel limit, or ImageRejected saying why not."""
    img = _checked(data, max_pixels, jpeg_only=True)
    size = _shown_size(img)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as err:  # truncated or corrupt entropy data
        raise ImageRejected("corrupt-image", f"JPEG does not decode: {err}") from err
    return size


def open_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A decoded RGB image as shown (EXIF orientation applied), for pages and grids; ImageRejected if it cannot be."""
    img = _checked(data, max_pixels, jpeg_only=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return ImageOps.exif_transpose(img).convert("RGB")
    except Exception as err:
        raise ImageRejected("corrupt-image", f"image does not decode: {err}") from err


def image_suffixes() -> set[str]:
    """Every file suffix PIL has a decoder for (JPEG, PNG, WebP, TIFF, BMP, GIF, …), lower case."""
    Image.init()
    return {suffix for suffix, kind in Image.registered_extensions().items() if kind in Image.OPEN}


def find_images(items, skip: str = "") -> list:
    """The image files that ``items`` (files and folders) name: a file as given; a folder's files, its subfolders'
    too, in name order, every type PIL can decode (by suffix; hidden folders such as ``skip`` are left out)."""
    suffixes, found = image_suffixes(), []
    for item in map(Path, items):
        if not item.is_dir():
            found.append(item)
            continue
        found += sorted(p for p in item.rglob("*") if p.suffix.lower() in suffixes and p.is_file()
                        and not any(part.startswith(".") or part == skip for part in p.relative_to(item).parts[:-1]))
    return found
