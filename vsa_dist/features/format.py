"""Feature shards: one WebDataset sample per image, written by ``vsa features``, read by the training stages.

A sample (key = the image shard's key):

    {key}.feat.npy       float16 [1 + R, D]: row 0 the whole image, rows 1..R the regions, best first
    {key}.boxes.npy      float32 [R, 4]: the regions' (x1, y1, x2, y2) in the image's own pixels
    {key}.proposals.npy  float32 [K, 4]: every candidate box the regions were chosen from (kept so that
                         nothing has to be proposed twice)
    {key}.json           image id, file name, split, size, sentences (raw + tokens), box scores,
                         the proposal method that produced the candidates

The folder's ``manifest.json`` has the same ``splits`` layout as an image-shard manifest, plus the
``settings`` that made the features; features made with different settings must never meet in one run.
"""

from __future__ import annotations

import json
from typing import Any

# what a feature folder's manifest says, read without numpy (its readers import these from here too)
from vsa_dist.data.manifests import (  # noqa: F401
    SETTINGS_KEYS,
    FeatureSettingsMismatch,
    check_same_settings,
    load_features_manifest,
    settings_of,
)
from vsa_dist.data.npy import npy_bytes, npy_load  # noqa: F401  (the feature arrays' encoding)

FEATURES_FORMAT_VERSION = 1

def decode_sample(sample: dict[str, Any]) -> dict[str, Any]:
    """A feature sample as read by ``webdataset`` or ``ray.data.read_webdataset(decoder=None)``."""
    meta = json.loads(sample["json"])
    meta["features"] = npy_load(sample["feat.npy"])
    meta["boxes"] = npy_load(sample["boxes.npy"])
    meta["proposals"] = npy_load(sample["proposals.npy"])
    return meta


def check_model_matches(features_dir: str, settings: dict[str, Any], model_state: dict[str, Any]) -> None:
    """A checkpoint may only meet features made the way its training features were."""
    trained_on = model_state.get("feature_settings") or settings  # checkpoints that predate the record
    differ = [k for k in SETTINGS_KEYS if trained_on.get(k) != settings.get(k)]
    if differ or model_state.get("feature_dim", settings["feature_dim"]) != settings["feature_dim"]:
        detail = ", ".join(f"{k}: {trained_on.get(k)!r} vs {settings.get(k)!r}" for k in differ) or "feature_dim"
        if "input" in differ:  # the images themselves: an evaluation decodes them from the folder's image shards
            detail = ("the model runs its whole CNN on the images (encoder full), not on a feature folder's vectors"
                      if trained_on.get("input") else "the model reads CNN vectors, not images") + f"; {detail}"
        elif "trunk_block" in differ:  # which encoder the folder is for: the one a person can act on
            block = trained_on.get("trunk_block")
            detail = (f"the model runs its own CNN blocks from {block} on: give it a trunk folder, vsa features "
                      f"--trunk-block {block}" if block else "the model reads CNN vectors, not trunk maps") + \
                f"; {detail}"
        raise FeatureSettingsMismatch(f"{features_dir}: not made the way the model's training features were ({detail})")
