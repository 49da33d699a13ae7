"""A whole split of a feature folder read into memory: the arrays evaluation scores (``load_split``), and every image's
sentences as word ids (the self-critical reward's corpus)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from vsa_dist.data.images import DEFAULT_MAX_PIXELS, model_input
from vsa_dist.data.manifests import image_shards
from vsa_dist.data.npy import npy_load
from vsa_dist.data.pairs import SENTENCES_PER_IMAGE, encode_sentences, encode_tokens, features_of
from vsa_dist.data.shards import jpegs_by_id, read_samples, shard_paths


def split_sentence_ids(features_dir: Path | str, split: str, index: dict[str, int],
                       max_words: int) -> list[list[tuple[int, ...]]]:
    """Every image's sentences as word-id tuples, encoded as the training rows encode them (the corpus of the
    CIDEr-D reward in self-critical training). Decodes only the metadata, but reads the tars through (feature
    bytes included), once per worker per run."""
    return [[tuple(encode_tokens(s["tokens"], index, max_words))
             for s in json.loads(sample["json"])["sentences"][:SENTENCES_PER_IMAGE]]
            for sample in read_samples(shard_paths(features_dir, [split]))]


def load_split(features_dir: Path | str, split: str, index: dict[str, int], max_words: int,
               whole_image_only: bool = False, image_size: int = 0,
               max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, Any]:
    """A whole split in memory (evaluation: 1,000 images are about 50 MB of float16 features), with each
    image's id, JPEG file name, region boxes, and reference sentences (raw and as the shards tokenised them).

    ``image_size``: ``features`` are the images themselves instead, uint8 [N, 3, S, S] as a model that trains its
    whole CNN takes them (``data.images.model_input``: 150 MB for 1,000 images at 224 pixels), decoded from the image
    shards the folder was made from."""
    features, tokens, boxes, image_ids, file_names, references, sentence_tokens = [], [], [], [], [], [], []
    for sample in read_samples(shard_paths(features_dir, [split])):
        meta = json.loads(sample["json"])
        features.append(features_of(sample["feat.npy"], whole_image_only))
        tokens.append(encode_sentences(meta["sentences"], index, max_words))
        image_ids.append(meta["image_id"])
        file_names.append(meta.get("file_name", ""))
        boxes.append(npy_load(sample["boxes.npy"]))
        references.append([s["raw"] for s in meta["sentences"]])
        sentence_tokens.append([s["tokens"] for s in meta["sentences"]])
    if not features:
        raise ValueError(f"{features_dir}: no {split!r} images in the feature shards")
    if image_size:
        jpegs = jpegs_by_id(image_shards(features_dir), [split], set(image_ids))
        features = [model_input(jpegs[image_id], image_size, max_pixels) for image_id in image_ids]
    return {"split": split, "features": np.stack(features), "tokens": np.stack(tokens), "boxes": np.stack(boxes),
            "image_ids": image_ids, "file_names": file_names, "references": references,
            "sentence_tokens": sentence_tokens}
