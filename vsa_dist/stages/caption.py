"""``vsa caption``: caption images with a registered generator.

    vsa caption photo.jpg more.jpg --model models:/vsa-captioner@champion
    vsa caption ../shared/data/flickr8k-mini/Images --model models:/vsa-captioner/3 --beam 5
    vsa caption photo.jpg --regions 5 --model models:/vsa-region-captioner@champion

The model is pulled from the MLflow registry (``MLFLOW_TRACKING_URI``, default the local sqlite store),
the images' features are extracted with the backbone the model was trained on, and one line per image
is printed: ``path<TAB>caption``, and with ``--regions N`` N more: ``path<TAB>x1,y1,x2,y2<TAB>caption``
for the image's top regions. A folder stands for the images in it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

from vsa_dist import config as cfglib
from vsa_dist.config import option
from vsa_dist.data.images import DEFAULT_MAX_PIXELS

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CaptionConfig(cfglib.Config):
    """Caption images (files or folders) with a model from the MLflow registry."""

    images: list[str] = option([], "image files or folders", positional=True)
    model: str = option("models:/vsa-captioner@champion", "MLflow model URI or model folder")
    beam: int = option(0, "beam size; 0: the one chosen on dev when the model was trained", range="[0, inf)")
    batch_size: int = option(32, "images per feature/caption batch", range="[1, inf)")
    regions: int = option(0, "also describe this many top regions of each image, with their boxes (a model trained "
                             "with --snippets)", range="[0, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images above this many pixels, from their header "
                                                 "(decompression bombs); may be raised", range="[1, inf)")

    def validate(self) -> None:
        if not self.images:
            raise cfglib.ConfigError("name at least one image file or folder")

    def check_inputs(self) -> None:
        for item in self.images:
            if not Path(item).exists():
                raise cfglib.ConfigError(f"{item}: no such file or folder")


def image_files(items: list[str]) -> list[Path]:
    files: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise cfglib.ConfigError(f"{item}: no {'/'.join(IMAGE_SUFFIXES)} images in this folder")
            files += found
        else:
            files.append(item)
    return files


def load_captioner(uri: str, max_pixels: int = DEFAULT_MAX_PIXELS):
    """The captioner at ``uri`` (``vsa_dist.serving.Captioner``), built from its own artifacts: no code from the
    model folder runs, nothing is unpickled."""
    import mlflow

    from vsa_dist.serving import load_captioner as load
    from vsa_dist.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return load(uri, max_pixels)
    except mlflow.exceptions.MlflowException as err:
        raise cfglib.ConfigError(f"model {uri}: {err.message} (tracking store {tracking_uri()})") from err
    except ValueError as err:
        raise cfglib.ConfigError(f"model {uri}: {err}") from err


def _read(path: Path) -> tuple[bytes, str]:
    """A file's bytes, or no bytes and why (the image then gets an error line, the others are still captioned)."""
    try:
        return path.read_bytes(), ""
    except OSError as err:
        return b"", f"cannot read: {err.strerror or err}"


def run(cfg: CaptionConfig) -> list[tuple[str, str]]:
    """Print ``path<TAB>caption`` per image (and its regions); an image that cannot be captioned gets
    ``path: error: reason`` on stderr and the others go on. Exits 1 when any image failed."""
    files = image_files(cfg.images)
    captioner = load_captioner(cfg.model, cfg.max_pixels)
    results, failed = [], 0
    for start in range(0, len(files), cfg.batch_size):
        part = files[start:start + cfg.batch_size]
        read = [_read(p) for p in part]
        described = captioner.describe([data for data, _ in read], names=[str(p) for p in part], beam=cfg.beam,
                                       regions=cfg.regions)
        for path, (_, read_error), result in zip(part, read, described):
            if read_error or result.error:
                print(f"{path}: error: {read_error or result.error}", file=sys.stderr, flush=True)
                failed += 1
                continue
            print(f"{path}\t{result.caption}", flush=True)
            results.append((str(path), result.caption))
            for box, region_caption in result.regions:
                corners = ",".join(f"{v:g}" for v in box)
                print(f"{path}\t{corners}\t{region_caption}", flush=True)
                results.append((f"{path}#{corners}", region_caption))
    if failed:
        print(f"vsa caption: {len(files) - failed} of {len(files)} images captioned; {failed} failed (see above)",
              file=sys.stderr, flush=True)
        raise SystemExit(1)
    return results


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    return cfglib.run_stage(CaptionConfig, run, argv, prog="vsa caption", preset=None, input_errors=(ValueError,))
