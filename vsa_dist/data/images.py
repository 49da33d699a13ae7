"""Every image this suite decodes goes through here: a pixel limit read from the header before any decoding,
and one orientation (EXIF applied, as a person sees the photo) for sizes, features, boxes and thumbnails.

Shard building checks an image once (its bytes stay as they are); ``vsa features``, ``vsa caption``, the
served captioner, the report and the example grids decode with the same limit.
"""

from __future__ import annotations

import io
import math
import threading
import warnings
from pathlib import Path

import numpy as np
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


def model_input(data: bytes, size: int, max_pixels: int = DEFAULT_MAX_PIXELS, crop_min_area: float = 1.0,
                flip: bool = False, rng: np.random.Generator | None = None) -> np.ndarray:
    """Image bytes → the CNN's input, uint8 [3, size, size], as shown (EXIF applied), for a CNN that trains from the
    images (``encoder=full``). Without ``rng`` the whole image, squashed to the square (what ``vsa features`` gives
    the CNN); with it, a random resized crop (an area share in [crop_min_area, 1] of the image and an aspect ratio in
    [3/4, 4/3], as torchvision's) mirrored at random when ``flip``.

    JPEGs decode in the decoder's draft mode, at the smallest of 1/1, 1/2, 1/4 or 1/8 scale that still covers the
    output (the smallest crop included): a 640-pixel COCO photo decoded at half scale costs about a third of the full
    decode, and its pixels would be thrown away by the resize anyway. ImageRejected says why an image cannot be used."""
    img = _checked(data, max_pixels, jpeg_only=False)
    width, height = _shown_size(img)
    # the draft size keeps the smallest crop's side at ``size`` pixels or more; PIL picks a scale no smaller than it
    need = math.ceil(size / math.sqrt(crop_min_area if rng is not None else 1.0))
    short = min(width, height)
    if short > need:
        img.draft("RGB", (math.ceil(width * need / short), math.ceil(height * need / short)))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = ImageOps.exif_transpose(img).convert("RGB")
    except Exception as err:
        raise ImageRejected("corrupt-image", f"image does not decode: {err}") from err
    box = (0, 0, img.width, img.height) if rng is None else _random_crop(img.width, img.height, crop_min_area, rng)
    img = img.resize((size, size), Image.BILINEAR, box=box)
    if rng is not None and flip and rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    return np.ascontiguousarray(np.asarray(img).transpose(2, 0, 1))


def _random_crop(width: int, height: int, min_area: float, rng: np.random.Generator) -> tuple[float, ...]:
    """torchvision's RandomResizedCrop box: area share in [min_area, 1], aspect ratio log-uniform in [3/4, 4/3]; after
    ten misses, the whole image."""
    for _ in range(10):
        area = width * height * rng.uniform(min_area, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = math.sqrt(area * ratio), math.sqrt(area / ratio)
        if w <= width and h <= height:
            left, top = rng.uniform(0, width - w), rng.uniform(0, height - h)
            return (left, top, left + w, top + h)
    return (0, 0, width, height)


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
