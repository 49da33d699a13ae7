"""The region test set built from snippet records, checked by hand on one made-up image, and the phrase check."""

from __future__ import annotations

import json

import numpy as np

from vsa_dist.data.pairs import phrase, snippet_rows_to_arrays, word_index
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
        {"sentence": 2, "region": 3, "words": ["two", "kids", "in"]},       # cut to a phrase: "two kids"
        {"sentence": 2, "region": 1, "words": ["a", "dog", "and", "a"]},    # "a dog"
        {"sentence": 3, "region": 2, "words": ["in", "a"]},               # nothing left of it
    ]
    sample = {"json": json.dumps({"image_id": "img", "snippets": snippets}).encode(), "feat.npy": npy_bytes(features),
              "boxes.npy": npy_bytes(boxes)}
    items = region_items([sample], min_words=2)
    assert items["keys"] == ["img#1", "img#2", "img#3"]
    assert items["references"] == {"img#1": ["a dog"], "img#2": ["a brown dog", "a dog"],
                                   "img#3": ["on the beach", "two kids"]}
    np.testing.assert_array_equal(items["features"], features[[1, 2, 3]])
    np.testing.assert_array_equal(items["boxes"], boxes[[0, 1, 2]])
    assert region_items([sample], min_words=1)["references"]["img#1"] == ["plays", "a dog"]
    assert region_items([sample], min_words=3)["keys"] == ["img#2", "img#3"]
    assert region_items([], 2)["keys"] == []


def test_phrase_cuts_what_a_phrase_cannot_end_on():
    assert phrase(["a", "man", "in", "a"]) == ["a", "man"] and phrase(["in", "a"]) == [] and phrase([]) == []
    assert phrase(["a", "dog", "runs"]) == ["a", "dog", "runs"] and phrase(["The", "Man", "And"]) == ["The", "Man"]


def test_snippet_rows_train_on_phrases_unless_told_otherwise():
    sample_json = json.dumps({"sentences": [{"tokens": ["a", "man", "in", "a", "red", "shirt"]}], "snippets": [
        {"sentence": 0, "region": 1, "words": ["a", "man", "in"]},
        {"sentence": 0, "region": 2, "words": ["a"]},
        {"sentence": 0, "region": 3, "words": ["red", "shirt"]}]}).encode()
    batch = {"json": [sample_json], "feat.npy": [npy_bytes(np.eye(4, dtype=np.float16))]}
    index = word_index(["a", "man", "in", "red", "shirt"])
    cut = snippet_rows_to_arrays(batch, index, 20)
    kept = snippet_rows_to_arrays(batch, index, 20, phrases=False)
    # rows: the image with its sentence, then one per region with snippets (region 2's "a" is no phrase)
    np.testing.assert_array_equal(cut["features"], np.eye(4, dtype=np.float16)[[0, 1, 3]])
    np.testing.assert_array_equal(kept["features"], np.eye(4, dtype=np.float16)[[0, 1, 2, 3]])
    first_word_ids = cut["tokens"][1][0]
    assert list(first_word_ids[first_word_ids != 0]) == [index["a"], index["man"]]


def test_dangling_endings():
    assert dangling("a man in a") and dangling("a dog and a") and dangling("") and dangling("two girls in")
    assert not dangling("a man in a red shirt") and not dangling("a dog") and not dangling("people walking")
