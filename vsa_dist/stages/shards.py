"""``vsa shards build``: a caption dataset → WebDataset shards + manifest + rejects list.

    vsa shards build --format flickr8k --root ../shared/data/flickr8k --out runs/flickr8k/shards
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.configs import ShardsConfig
from vsa_dist.data.shards import write_shards
from vsa_dist.data.sources import InputFormatError, read_source
from vsa_dist.stages import run_stage


def run(cfg: ShardsConfig) -> dict:
    start = time.time()
    root = storage.mirror(cfg.root)  # a remote dataset is read from a local copy
    # the catalog's scratch file beside the output folder: on the disk the shards go to
    scratch = None if storage.is_remote(cfg.out) else Path(cfg.out).absolute().parent
    with read_source(cfg.format, root, cfg.captions, cfg.split_files, cfg.split_from, cfg.images_dir,
                     scratch) as catalog, storage.output_folder(cfg.out, "shards") as out:
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
    return run_stage(
        ShardsConfig, run, argv, prog="vsa shards build", preset=None, input_errors=(InputFormatError,)
    )
