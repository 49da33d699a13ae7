"""A shard folder's and a feature folder's ``manifest.json``: what the folder holds and, for features, the settings
that made them (features made differently never meet in one run); read without opening a shard, with the standard
library only: a config's checks read them before any work."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from vsa_dist import storage
from vsa_dist.io import sha256_file

MANIFEST = "manifest.json"

# What makes two feature sets interchangeable: the same backbone, weights, preprocessing and regions.
SETTINGS_KEYS = ("format_version", "backbone", "weights_sha256", "input_size", "mean", "std", "feature_dim",
                 "region_mode", "proposals", "num_regions", "roi_size", "precision", "dtype", "trunk_block", "input",
                 "cnn_sha256")


class FeatureSettingsMismatch(ValueError):
    """Two feature folders were made with different settings."""


def load_manifest(shards_dir: Path | str) -> dict[str, Any]:
    """A shard folder's manifest; the folder may be a path or a storage URI."""
    path = storage.join(shards_dir, MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no shard manifest (build shards first: vsa shards build)")
    return json.loads(storage.read_bytes(path))


def load_features_manifest(features_dir: Path | str) -> dict[str, Any]:
    path = storage.join(features_dir, MANIFEST)
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: no feature manifest (extract features first: vsa features)")
    manifest = json.loads(storage.read_bytes(path))
    if manifest.get("kind") != "features":
        raise ValueError(f"{path}: not a feature manifest (kind={manifest.get('kind')!r})")
    return manifest


def source_shards(features_manifest: dict[str, Any], features_dir: Path | str) -> str | None:
    """The image shards the features were made from, if they are still where they were (or beside them)."""
    recorded = str(features_manifest.get("source", {}).get("shards", ""))
    if not recorded:
        return None
    beside = storage.join(storage.parent(features_dir), recorded.rstrip("/").rsplit("/", 1)[-1])
    for candidate in (recorded, beside):
        if storage.exists(storage.join(candidate, MANIFEST)):
            return candidate
    return None


def image_shards(features_dir: Path | str) -> str:
    """The image shards a feature folder was made from (``source_shards``), for a model that reads the images
    themselves; ValueError when they are gone or are no longer the shards the folder was made from."""
    manifest = load_features_manifest(features_dir)
    shards = source_shards(manifest, features_dir)
    if shards is None:
        raise ValueError(f"{features_dir}: the image shards it was made from "
                         f"({manifest.get('source', {}).get('shards') or 'not recorded'}) are not there; the whole "
                         "CNN trains from those images")
    digest = hashlib.sha256(storage.read_bytes(storage.join(shards, MANIFEST))).hexdigest()
    if digest != manifest["source"].get("manifest_sha256"):
        raise ValueError(f"{features_dir}: the image shards in {shards} changed since the folder was made from them "
                         "(make the feature folder again: vsa features)")
    return shards


def takes_pixels(state: dict[str, Any]) -> bool:
    """A checkpoint whose model runs its whole CNN on the images (``encoder=full``), as its feature settings record."""
    return (state.get("feature_settings") or {}).get("input") == "pixels"


def as_pixel_input(settings: dict[str, Any], pixels: bool = True) -> dict[str, Any]:
    """A feature folder's settings as a model fed its images' pixels records them (``input: pixels``): no folder's
    vectors can then reach such a model by mistake (``check_model_matches``)."""
    return {**settings, "input": "pixels"} if pixels else settings


def settings_of(manifest: dict[str, Any]) -> dict[str, Any]:
    return {key: manifest["settings"].get(key) for key in SETTINGS_KEYS}


def check_same_settings(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The one settings dict all ``manifests`` (name → manifest) share, or an error naming what differs."""
    names = list(manifests)
    first = settings_of(manifests[names[0]])
    for name in names[1:]:
        other = settings_of(manifests[name])
        differ = {k: (first[k], other[k]) for k in SETTINGS_KEYS if first[k] != other[k]}
        if differ:
            detail = "; ".join(f"{k}: {a!r} in {names[0]} vs {b!r} in {name}" for k, (a, b) in differ.items())
            raise FeatureSettingsMismatch(f"features made with different settings cannot be mixed: {detail}")
    return first


def dataset_label(features_dir: Path | str) -> str:
    """The name people know a feature folder's data by: the folder its image shards were built from (``flickr8k``,
    ``flickr8k-mini``), else the shards' caption format; empty when the shards are gone."""
    shards = source_shards(load_features_manifest(features_dir), features_dir)
    if shards is None:
        return ""
    manifest = load_manifest(shards)
    root = str(manifest.get("config", {}).get("root", "")).rstrip("/")
    return root.rsplit("/", 1)[-1] if root else str(manifest.get("source", {}).get("format", ""))


def trained_cnn_file(features_manifest: dict[str, Any]) -> str:
    """The alignment checkpoint whose CNN made a feature folder (``vsa features --cnn-from``), checked to be that very
    file still; ValueError naming it otherwise (a captioner without it could not embed a new image)."""
    location = features_manifest.get("config", {}).get("cnn_from", "")
    wanted = features_manifest["settings"]["cnn_sha256"]
    try:
        path = storage.fetch(location) if location else ""
    except FileNotFoundError:
        path = ""
    if not path or not Path(path).is_file():
        raise ValueError(f"the features were made by the CNN of {location or 'an alignment checkpoint'}, which is "
                         "gone: the captioner cannot carry it")
    if sha256_file(Path(path)) != wanted:
        raise ValueError(f"{location} changed since it made the features (sha256 {wanted[:12]}): the captioner cannot "
                         "carry the CNN they came from")
    return path
