"""``vsa shards build``: a caption dataset → WebDataset shards + manifest + rejects list.

    vsa shards build --format flickr8k --root ../shared/data/flickr8k --out runs/flickr8k/shards
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.config import option
from vsa_dist.data.images import DEFAULT_MAX_PIXELS
from vsa_dist.data.shards import write_shards
from vsa_dist.data.sources import InputFormatError, read_source
from vsa_dist.data.text import VOCAB_MIN_COUNT

FORMATS = ("flickr8k", "flickr30k", "karpathy", "coco")


@dataclass
class ShardsConfig(cfglib.Config):
    """Build WebDataset shards from a caption dataset."""

    format: str = option("flickr8k", "input format", choices=FORMATS)
    root: str = option("", "dataset folder (captions, split lists, images/)")
    out: str = option("", "output folder for shards, manifest.json, rejects.jsonl")
    captions: str = option("", "caption file(s), comma-separated; default: the format's usual name in ROOT")
    images_dir: str = option("", "image folder; default ROOT/images if it exists, else ROOT")
    split_files: str = option("", "split lists as a pattern with {split}, e.g. 'Flickr_8k.{split}Images.txt'")
    split_from: str = option("", "coco: take train/val/test from this Karpathy-split JSON")
    samples_per_shard: int = option(500, "images per tar shard", range="[1, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "reject images above this many pixels (decompression bombs)",
                                                 range="[1, inf)")
    vocab_min_count: int = option(VOCAB_MIN_COUNT, "vocabulary keeps words seen this often in train", range="[1, inf)")
    vocab_splits: list[str] = option(["train"], "splits the vocabulary is counted on")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        if not self.out:
            raise cfglib.ConfigError("out: an output folder is required")

    def check_inputs(self) -> None:
        if not self.root or not storage.exists(self.root):
            raise cfglib.ConfigError(f"root {self.root!r}: no such dataset folder")


def run(cfg: ShardsConfig) -> dict:
    start = time.time()
    root = storage.mirror(cfg.root)  # a remote dataset is read from a local copy
    catalog = read_source(cfg.format, root, cfg.captions, cfg.split_files, cfg.split_from, cfg.images_dir)
    with storage.output_folder(cfg.out, "shards") as out:
        manifest = write_shards(catalog, out, cfg.samples_per_shard, cfg.max_pixels, cfg.vocab_min_count,
                                tuple(cfg.vocab_splits), config=cfglib.to_dict(cfg), progress=cfg.progress)
    counts = manifest["counts"]
    _check_trainable(cfg, manifest)
    per_split = ", ".join(f"{s} {v['images']}" for s, v in sorted(manifest["splits"].items()))
    print(f"shards: {counts['images']['written']} images ({per_split}), {counts['sentences']['written']} sentences "
          f"written to {cfg.out}; rejected {counts['images']['rejected']} images, {counts['sentences']['rejected']} "
          f"sentences (see {storage.join(cfg.out, 'rejects.jsonl')}); vocab {manifest['vocab']['size']} words; "
          f"{manifest['build']['shards_built']} shards built, {manifest['build']['shards_reused']} reused; "
          f"{time.time() - start:.1f}s")
    return manifest


def _check_trainable(cfg: ShardsConfig, manifest: dict) -> None:
    """A build that wrote nothing usable fails (after writing its manifest and rejects, to look at): no image at all
    (a wrong images folder), or none in train/dev/test (no split list found). A missing split is only warned of."""
    from collections import Counter

    images = manifest["counts"]["images"]
    rejects = storage.join(cfg.out, "rejects.jsonl")
    if images["written"] == 0:
        reasons = Counter({k.split(":", 1)[1]: v for k, v in manifest["rejects"]["by_reason"].items()
                           if k.startswith("image:")}).most_common(3)
        raise InputFormatError(cfg.root, f"no image was written: {images['rejected']} of {images['input']} rejected "
                                         f"({', '.join(f'{k} {v}' for k, v in reasons)}; see {rejects}); is the "
                                         "images folder right (--images-dir)?")
    present = {split for split, info in manifest["splits"].items() if info["images"]}
    if not present & {"train", "dev", "test"}:
        raise InputFormatError(cfg.root, f"no image is in train, dev or test (only {sorted(present)}): no split list "
                                         "was found; name them with --split-files or --split-from")
    if missing := [split for split in ("train", "dev", "test") if split not in present]:
        print(f"shards: warning: no {'/'.join(missing)} images; training needs train and dev, and tests on test",
              flush=True)


def main(argv: list[str] | None = None) -> dict:
    return cfglib.run_stage(
        ShardsConfig, run, argv, prog="vsa shards build", preset=None, input_errors=(InputFormatError,)
    )
