"""Atomic writes and the per-shard completion records that make every stage's rerun resume."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once at import: os.umask can only be read by setting it, which is not safe once threads run.
_FILE_MODE = 0o666 & ~_umask()


def temp_path(path: Path) -> tuple[int, str]:
    """An open temporary file beside ``path``: same filesystem, so the final rename is atomic.

    It gets the mode an ordinary new file would (mkstemp's 0600 would make outputs private to one user).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.fchmod(fd, _FILE_MODE)
    return fd, tmp


def atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = temp_path(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


def remove_leftovers(*folders: Path) -> None:
    """Temporary files of a run that was killed mid-write."""
    for folder in folders:
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def completed_record(state_path: Path, shard_path: Path, plan: str) -> dict[str, Any] | None:
    """The shard's completion record if it is for this plan and the file still has its sha256, else None.

    A record with no samples (every input rejected) is complete when no shard file exists.
    """
    if not state_path.is_file():
        return None
    record = json.loads(state_path.read_text())
    if record.get("plan") != plan:
        return None
    if record["samples"] == 0:
        return record if not shard_path.exists() else None
    if shard_path.is_file() and sha256_file(shard_path) == record.get("sha256"):
        return record
    return None


def remove_stale_shards(out_dir: Path, state_dir: Path, keep: set[str]) -> None:
    """Shards (and their records) of an earlier plan that this one no longer has: a glob would pick
    them up and mix them in."""
    for stale in out_dir.glob("*-[0-9][0-9][0-9][0-9][0-9][0-9].tar"):
        if stale.name not in keep:
            stale.unlink()
            (state_dir / f"{stale.name}.json").unlink(missing_ok=True)
