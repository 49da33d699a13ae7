"""Atomic writes and the per-shard completion records that make every stage's rerun resume."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

from vsa_dist.errors import ConfigError


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


@contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    """A binary file written in full under a temporary name and renamed into place, or not at all."""
    fd, tmp = temp_path(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as fh:
        fh.write(data)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8"))


STATE_DIR = "_state"
OWNER = "owner.json"  # in _state/: which stage's folder this is; nothing is deleted from a folder without it


class ForeignFolder(ConfigError):
    """An output folder that this stage did not make: it is left untouched."""


def _manifest_kind(folder: Path) -> str | None:
    """The kind of vsa output a folder's manifest.json describes (image-shard manifests predate the key)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or "format_version" not in manifest or "splits" not in manifest:
        return None
    return str(manifest.get("kind", "shards"))


def claim_output_folder(folder: Path, kind: str) -> Path:
    """Make ``folder`` this stage's output folder, or refuse it before anything is written or deleted.

    A new or empty folder is claimed (``_state/owner.json``); a folder already claimed by this kind of stage, or
    holding its manifest (folders made before the claim existed), is resumed. Anything else (a file, a folder of
    other files, another stage's output) raises ForeignFolder: stages delete stale files of their own, and
    must never take a stranger's ``*-000001.tar`` for one."""
    if folder.exists() and not folder.is_dir():
        raise ForeignFolder(f"{folder}: is a file, not an output folder")
    owner_path = folder / STATE_DIR / OWNER
    try:
        owner = json.loads(owner_path.read_text()).get("kind") if owner_path.is_file() else None
    except (OSError, ValueError, AttributeError):
        owner = None
    found = owner or _manifest_kind(folder)
    if found is not None and found != kind:
        raise ForeignFolder(f"{folder}: holds vsa {found} output, not {kind}; choose another --out")
    if found is None and folder.is_dir() and any(folder.iterdir()):
        raise ForeignFolder(f"{folder}: not empty and holds no vsa {kind} manifest; choose an empty or new --out "
                            "(vsa never deletes files it did not write)")
    if owner is None:
        atomic_write_json(owner_path, {"kind": kind, "written_by": "vsa-dist"})
    return folder


def remove_leftovers(*folders: Path) -> None:
    """Temporary files of a run that was killed mid-write (``temp_path``'s names, in a folder claimed by a stage)."""
    for folder in folders:
        for leftover in folder.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)


def read_record(state_path: Path) -> dict[str, Any] | None:
    """A completion record, or None when it is missing or damaged (its shard is then simply redone)."""
    try:
        record = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def completed_record(state_path: Path, shard_path: Path, plan: str) -> dict[str, Any] | None:
    """The shard's completion record if it is for this plan and the file still has its sha256, else None.

    A record with no samples (every input rejected) is complete when no shard file exists.
    """
    record = read_record(state_path)
    if record is None or record.get("plan") != plan or not isinstance(record.get("samples"), int):
        return None
    if record["samples"] == 0:
        return record if not shard_path.exists() else None
    if shard_path.is_file() and sha256_file(shard_path) == record.get("sha256"):
        return record
    return None


def remove_stale_shards(out_dir: Path, state_dir: Path, keep: set[str]) -> None:
    """Shards of an earlier plan that this one no longer has, and their records: only those a record of ours
    names (a file we did not write is never deleted, whatever its name)."""
    for record_path in state_dir.glob("*.tar.json"):
        name = record_path.name.removesuffix(".json")
        if name in keep or "/" in name or name.startswith("."):
            continue
        (out_dir / name).unlink(missing_ok=True)
        record_path.unlink(missing_ok=True)
