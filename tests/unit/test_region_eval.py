"""The region test set built from snippet records, checked by hand on one made-up image, and the phrase check."""

from __future__ import annotations

import json

import numpy as np

from vsa_dist.eval.regions import dangling, region_items
from vsa_dist.features.format import npy_bytes


def test_region_items_by_hand():
    features = np.arange(4 * 3, dtype=np.float16).reshape(4, 3)        # row 0: the whole image, rows 1-3: regions
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], np.float32)  # regions 1-3 only
    snippets = [  # sentence 0: "a brown dog runs on the beach", sentence 1: "a dog plays"
        {"sentence": 0, "region": 2, "words": ["a", "brown", "dog"]},
        {"sentence": 0, "region": 0, "words": ["runs"]},                   # the whole image: not a region item
        {"sentence": 0, "region": 3, "words": ["on", "the", "beach"]},
        {"sentence": 1, "region": 2, "words": ["a", "dog"]},
        {"sentence": 1, "region": 1, "words": ["plays"]},                 # one word: below min_words=2
    ]
    sample = {"json": json.dumps({"image_id": "img", "snippets": snippets}).encode(), "feat.npy": npy_bytes(features),
              "boxes.npy": npy_bytes(boxes)}
    items = region_items([sample], min_words=2)
    assert items["keys"] == ["img#2", "img#3"]
    assert items["references"] == {"img#2": ["a brown dog", "a dog"], "img#3": ["on the beach"]}
    np.testing.assert_array_equal(items["features"], features[[2, 3]])
    np.testing.assert_array_equal(items["boxes"], boxes[[1, 2]])
    assert region_items([sample], min_words=1)["keys"] == ["img#1", "img#2", "img#3"]
    assert region_items([], 2)["keys"] == []


def test_dangling_endings():
    assert dangling("a man in a") and dangling("a dog and a") and dangling("") and dangling("two girls in")
    assert not dangling("a man in a red shirt") and not dangling("a dog") and not dangling("people walking")
