"""Feature shards → the arrays the text-image models train and evaluate on: one sample's rows (what the train stream's
read workers run: numpy only, no torch or webdataset, which they would import afresh every epoch) and the word ids.
Whole splits in memory: ``data/splits.py``.

One row per image: ``features`` float16 [1+R, D] and ``tokens`` int32 [S, T], the image's sentences as
word ids (PAD-padded, at most ``max_words`` words, at most S = 5 sentences; missing sentences are all PAD).
Word ids: PAD = 0, UNK = 1, then the manifest's vocabulary (words seen >= 5 times in train) from 2 on.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from vsa_dist.data.images import ImageRejected, model_input
from vsa_dist.data.npy import npy_load
from vsa_dist.models.tokens import CONTINUED_WORDS, PAD, UNK

# The row functions below run in Ray Data's read workers, which Ray starts afresh for each epoch's stream
# (it ends idle workers within a second, and rank 0's dev evaluation lasts longer), so this module imports
# only numpy, json and PIL (data/images.py, for the image rows) at the top: webdataset (and the torch it pulls in)
# cost ~1.8 s of a core per worker.

SENTENCES_PER_IMAGE = 5

def phrase(words: list[str]) -> list[str]:
    """A snippet without the words it cannot end on (``CONTINUED_WORDS``: "a man in" → "a man"; "a" → nothing).
    The snippet MRF cuts a sentence where the region changes, so a snippet often ends on the word that opens the next
    one ("a man in" | "a red shirt"); a region generator trained on such snippets would end its captions the same
    way."""
    end = len(words)
    while end and words[end - 1].lower() in CONTINUED_WORDS:
        end -= 1
    return words[:end]


def word_index(vocab_words: list[str]) -> dict[str, int]:
    return {word: i + 2 for i, word in enumerate(vocab_words)}


def encode_tokens(tokens: list[str], index: dict[str, int], max_words: int) -> list[int]:
    return [index.get(t, UNK) for t in tokens[:max_words]]


def encode_sentences(sentences: list[dict[str, Any]], index: dict[str, int], max_words: int) -> np.ndarray:
    out = np.full((SENTENCES_PER_IMAGE, max_words), PAD, dtype=np.int32)
    for row, sentence in enumerate(sentences[:SENTENCES_PER_IMAGE]):
        ids = encode_tokens(sentence["tokens"], index, max_words)
        out[row, :len(ids)] = ids
    return out


def features_of(raw: bytes, whole_image_only: bool) -> np.ndarray:
    features = npy_load(raw)
    return features[0] if whole_image_only else features


def feature_sample_to_row(sample: dict[str, Any], index: dict[str, int], max_words: int,
                          whole_image_only: bool = False) -> dict[str, np.ndarray]:
    """``read_webdataset``'s decoder over feature shards: one image's raw members → its fixed-shape training row
    (``whole_image_only``: features [D], the whole-image row, for the generator)."""
    return {"features": features_of(sample["feat.npy"], whole_image_only),
            "tokens": encode_sentences(json.loads(sample["json"])["sentences"], index, max_words)}


def image_sample_to_row(sample: dict[str, Any], index: dict[str, int], max_words: int, size: int, max_pixels: int,
                        crop_min_area: float, flip: bool) -> dict[str, np.ndarray]:
    """``read_webdataset``'s decoder over image shards (``encoder=full``): one image's JPEG → its CNN input, uint8
    [3, size, size], cropped and mirrored at random (``data.images.model_input``), beside its sentences. The shards
    were checked when they were built: an image that fails now stops the run, naming its shard and key."""
    try:
        image = model_input(sample["jpg"], size, max_pixels, crop_min_area, flip, np.random.default_rng())
    except (ImageRejected, KeyError) as err:
        raise ValueError(f"{sample.get('__url__')}: sample {sample.get('__key__')}: {err}") from err
    return {"image": image, "tokens": encode_sentences(json.loads(sample["json"])["sentences"], index, max_words)}


def snippet_rows_to_arrays(
    batch: dict[str, np.ndarray], index: dict[str, int], max_words: int, phrases: bool = True
) -> dict[str, np.ndarray]:
    """``map_batches`` over snippet shards (``vsa align-snippets``): the generator's rows for the paper's second
    model, trained on full images *and* regions: per image, one row of its whole-image feature with its
    sentences, and per region that snippets were aligned to, rows of that region's feature with up to 5 of
    its snippets as the "sentences" (with ``phrases``, each cut to a ``phrase``; none left, none used)."""
    features, tokens = [], []
    for raw_json, raw_features in zip(batch["json"], batch["feat.npy"]):
        meta, image = json.loads(raw_json), npy_load(raw_features)
        features.append(image[0])
        tokens.append(encode_sentences(meta["sentences"], index, max_words))
        by_region: dict[int, list[dict[str, Any]]] = {}
        for snippet in meta["snippets"]:
            words = phrase(snippet["words"]) if phrases else snippet["words"]
            if words:
                by_region.setdefault(snippet["region"], []).append({"tokens": words})
        for region, snippets in sorted(by_region.items()):
            for start in range(0, len(snippets), SENTENCES_PER_IMAGE):
                features.append(image[region])
                tokens.append(encode_sentences(snippets[start:start + SENTENCES_PER_IMAGE], index, max_words))
    return {"features": np.stack(features), "tokens": np.stack(tokens)}
