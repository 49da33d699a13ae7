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

from dataclasses import dataclass, field
from pathlib import Path

from vsa_dist import config as cfglib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class CaptionConfig:
    """Caption images (files or folders) with a model from the MLflow registry."""

    images: list[str] = field(default_factory=list, metadata={"help": "image files or folders", "positional": True})
    model: str = field(default="models:/vsa-captioner@champion", metadata={"help": "MLflow model URI"})
    beam: int = field(default=0, metadata={"help": "beam size; 0: the one chosen on dev when the model was trained"})
    batch_size: int = field(default=32, metadata={"help": "images per feature/caption batch"})
    regions: int = field(default=0, metadata={"help": "also describe this many top regions of each image, with their boxes (a model trained with --snippets)"})

    def validate(self) -> None:
        if self.regions < 0:
            raise cfglib.ConfigError("regions must be >= 0")
        if not self.images:
            raise cfglib.ConfigError("name at least one image file or folder")
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


def load_captioner(uri: str):
    """The registered pyfunc model's Python object (``vsa_dist.serving.Captioner``)."""
    import mlflow

    from vsa_dist.tracking import tracking_uri

    mlflow.set_tracking_uri(tracking_uri())
    try:
        return mlflow.pyfunc.load_model(uri).unwrap_python_model()
    except mlflow.exceptions.MlflowException as err:
        raise cfglib.ConfigError(f"model {uri}: {err.message} (tracking store {tracking_uri()})") from err


def run(cfg: CaptionConfig) -> list[tuple[str, str]]:
    files = image_files(cfg.images)
    captioner = load_captioner(cfg.model)
    results = []
    for start in range(0, len(files), cfg.batch_size):
        part = files[start:start + cfg.batch_size]
        described = captioner.describe([p.read_bytes() for p in part], names=[str(p) for p in part], beam=cfg.beam,
                                       regions=cfg.regions)
        for path, (caption, regions) in zip(part, described):
            print(f"{path}\t{caption}", flush=True)
            results.append((str(path), caption))
            for box, region_caption in regions:
                corners = ",".join(f"{v:g}" for v in box)
                print(f"{path}\t{corners}\t{region_caption}", flush=True)
                results.append((f"{path}#{corners}", region_caption))
    return results


def main(argv: list[str] | None = None) -> list[tuple[str, str]]:
    return cfglib.run_stage(CaptionConfig, run, argv, prog="vsa caption", preset="caption", input_errors=(ValueError,))
