"""A shard folder's and a feature folder's ``manifest.json``: what the folder holds, read without opening a shard
(the standard library only: a config's checks read them before any work)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vsa_dist import storage

MANIFEST = "manifest.json"


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
