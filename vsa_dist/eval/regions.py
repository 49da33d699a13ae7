"""Region captions, scored as the paper's region experiment in spirit (section 4.3 scores region captions
against phrases people wrote for image regions; no such annotations exist for Flickr8k).

The test set is fixed before any generator is trained: ``vsa align-snippets --splits test`` aligns every test
reference sentence to the image's regions with the alignment model's MRF, and each region that received
snippets becomes one test item whose references are those snippets. A generator captions the region's
feature row (the whole-image model sees the region as if it were an image: with crop features it is
exactly the CNN of the crop), and BLEU/METEOR/ROUGE-L/CIDEr compare the captions with the snippets. Region 0,
the whole image, is left out: it is the whole-image test.

References are the snippets cut to phrases (``vsa_dist.data.pairs.phrase``: the MRF often ends a snippet on
the word that opens the next one, "a man in"), and a region caption must read as one too: ``dangling`` flags a
caption that ends in a word that needs a continuation ("a man in a", "a dog and a").
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import numpy as np

from vsa_dist.data.pairs import phrase
from vsa_dist.features.format import npy_load
from vsa_dist.models.tokens import CONTINUED_WORDS


def dangling(caption: str) -> bool:
    """True if the caption is empty or ends in a word that needs a continuation."""
    words = caption.split()
    return not words or words[-1].lower() in CONTINUED_WORDS


def region_items(samples: Iterable[dict[str, Any]], min_words: int = 2) -> dict[str, Any]:
    """Snippet samples (``vsa align-snippets`` shards) → the region test set: per region (not the whole image)
    that snippets were aligned to, its key ``IMAGE#REGION``, its feature row, its box and its snippets as
    references, each cut to a phrase (``phrase``: no trailing "in", "a", "and") and kept if ``min_words`` long."""
    keys, rows, boxes, references = [], [], [], {}
    for sample in samples:
        meta = json.loads(sample["json"])
        features, image_boxes = npy_load(sample["feat.npy"]), npy_load(sample["boxes.npy"])
        by_region: dict[int, list[str]] = {}
        for snippet in meta["snippets"]:
            words = phrase(snippet["words"])
            if snippet["region"] > 0 and len(words) >= min_words:
                by_region.setdefault(snippet["region"], []).append(" ".join(words))
        for region, snippets in sorted(by_region.items()):
            key = f"{meta['image_id']}#{region}"
            keys.append(key)
            rows.append(features[region])
            boxes.append(image_boxes[region - 1])  # boxes are of the regions only; feature row 0 is the image
            references[key] = snippets
    dim = rows[0].shape[-1] if rows else 0
    return {"keys": keys, "features": np.stack(rows) if rows else np.zeros((0, dim), np.float16),
            "boxes": np.stack(boxes) if boxes else np.zeros((0, 4), np.float32), "references": references}
