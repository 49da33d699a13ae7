"""Inputs and outputs by URI: a local path, or any filesystem pyarrow knows (``s3://``, ``gs://``, ``hdfs://``,
``file://``). On a cluster, every node must see the same data: a shared file system, or an object store.

The stages keep their local, atomic, resumable writers and work on a local *mirror* of a remote folder:
``mirror(uri)`` downloads what the remote folder already holds (a rerun resumes from it), ``publish``
uploads what the stage wrote, the manifest last so that readers never see a manifest whose shards are
missing. Readers that stream (Ray Data) get remote URIs directly; readers that open one tar at a time
(evaluation, examples) fetch it into a per-node cache.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from vsa_dist.io import atomic_write_bytes, claim_output_folder

CACHE_ENV = "VSA_CACHE_DIR"
_PUBLISH_LAST = ("manifest.json", "summary.json")
# Shards are compared by size, which is cheap on an object store; small files (manifests, records) are always copied.
_ALWAYS_COPY_BELOW = 1 << 20


def is_remote(location: str | Path) -> bool:
    return "://" in str(location)


def absolute(location: str) -> str:
    """A local path made absolute (a cluster's workers, and Ray Train's workers here, do not run in the driver's
    working folder); a URI, or nothing, as given."""
    return location if not location or is_remote(location) else os.path.abspath(location)


def join(location: str | Path, *names: str) -> str:
    """``location/names…`` for a path or a URI (a URI keeps its scheme and forward slashes)."""
    if is_remote(location):
        return "/".join([str(location).rstrip("/"), *names])
    return str(Path(location, *names))


def same_place(a: str | Path, b: str | Path) -> bool:
    """Whether two locations name the same folder (local paths resolved, URIs compared as written)."""
    if is_remote(a) or is_remote(b):
        return str(a).rstrip("/") == str(b).rstrip("/")
    return Path(a).resolve() == Path(b).resolve()


def parent(location: str | Path) -> str:
    """The folder holding ``location``, for a path or a URI (``Path`` would fold ``s3://`` into ``s3:/``)."""
    if is_remote(location):
        return str(location).rstrip("/").rsplit("/", 1)[0]
    return str(Path(location).parent)


def _filesystem(uri: str):
    import pyarrow.fs  # lazy: only a URI needs it, and it costs every command 0.14 s (every --help reads storage)

    try:
        return pyarrow.fs.FileSystem.from_uri(uri)
    except Exception as err:  # pyarrow raises ArrowInvalid / OSError with its own words
        raise ValueError(f"{uri}: not a storage URI pyarrow can open ({err})") from err


def exists(location: str | Path) -> bool:
    if not is_remote(location):
        return Path(location).exists()
    import pyarrow.fs  # lazy: as in _filesystem

    fs, path = _filesystem(str(location))
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def read_bytes(location: str | Path) -> bytes:
    if not is_remote(location):
        return Path(location).read_bytes()
    fs, path = _filesystem(str(location))
    try:
        with fs.open_input_stream(path) as stream:
            return stream.read()
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{location}: no such file") from err


def write_bytes(location: str | Path, data: bytes) -> None:
    """One file, atomically: a local write-and-rename, or one object-store upload."""
    if not is_remote(location):
        atomic_write_bytes(Path(location), data)
        return
    fs, path = _filesystem(str(location))
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vsa-dist")


def _cache_dir(uri: str) -> Path:
    # One folder per URI, named so a person can tell which: the last path part and a hash of the whole.
    name = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
    return cache_root() / f"{name}-{hashlib.sha256(uri.encode()).hexdigest()[:12]}"


def _remote_files(uri: str) -> dict[str, int]:
    """Relative path → size of every file under a remote folder (empty when it does not exist yet)."""
    import pyarrow.fs  # lazy: as in _filesystem

    fs, root = _filesystem(uri)
    if fs.get_file_info(root).type == pyarrow.fs.FileType.NotFound:
        return {}
    infos = fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True))
    return {info.path[len(root):].lstrip("/"): info.size for info in infos if info.type == pyarrow.fs.FileType.File}


def _download(uri: str, local: Path) -> None:
    atomic_write_bytes(local, read_bytes(uri))


def _same(local: Path, remote_size: int | None) -> bool:
    return (remote_size is not None and remote_size >= _ALWAYS_COPY_BELOW and local.is_file()
            and local.stat().st_size == remote_size)


def fetch(location: str) -> str:
    """One file as a local path: itself, or a cached copy of a remote file (fetched again if its size changed)."""
    if not is_remote(location):
        return location
    import pyarrow.fs  # lazy: as in _filesystem

    fs, path = _filesystem(location)
    info = fs.get_file_info(path)
    if info.type != pyarrow.fs.FileType.File:
        raise FileNotFoundError(f"{location}: no such file")
    local = _cache_dir(location.rsplit("/", 1)[0]) / location.rsplit("/", 1)[1]
    if not _same(local, info.size):
        _download(location, local)
    return str(local)


def mirror(location: str | Path, skip: tuple[str, ...] = ()) -> Path:
    """A local folder with what ``location`` holds: the folder itself, or for a URI a cache folder where
    files missing or of another size are downloaded (top-level names in ``skip`` are left out)."""
    if not is_remote(location):
        return Path(location)
    uri = str(location)
    local = _cache_dir(uri)
    for relative, size in _remote_files(uri).items():
        if relative.split("/", 1)[0] in skip:
            continue
        target = local / relative
        if not _same(target, size):
            _download(join(uri, relative), target)
    local.mkdir(parents=True, exist_ok=True)
    return local


def publish(local: Path, location: str | Path, skip: tuple[str, ...] = ()) -> int:
    """Upload what a stage wrote in its mirror ``local`` to ``location`` (nothing to do for a local path).

    Files the remote already has with the same size are kept (object stores write whole objects, so an
    upload is all or nothing); manifests and summaries go last. Returns the number of files uploaded.
    """
    if not is_remote(location):
        return 0
    uri = str(location)
    fs, root = _filesystem(uri)
    remote = _remote_files(uri)
    files = sorted((p for p in local.rglob("*") if p.is_file() and not p.name.startswith(".")),
                   key=lambda p: (p.name in _PUBLISH_LAST, str(p)))
    uploaded = 0
    for path in files:
        relative = path.relative_to(local).as_posix()
        if relative.split("/", 1)[0] in skip or _same(path, remote.get(relative)):
            continue
        fs.create_dir(f"{root}/{relative}".rsplit("/", 1)[0], recursive=True)
        with fs.open_output_stream(f"{root}/{relative}") as stream:
            stream.write(path.read_bytes())
        uploaded += 1
    return uploaded


@contextmanager
def output_folder(location: str | Path, kind: str, skip: tuple[str, ...] = ()) -> Iterator[Path]:
    """A stage's output folder as a local path: ``location`` itself, or its mirror, published when the
    stage ends without an error (a failed stage's partial work stays in the mirror for the rerun). A folder that
    is not this ``kind`` of stage's output, or not empty, is refused (``io.claim_output_folder``)."""
    local = claim_output_folder(mirror(location, skip), kind)
    local.mkdir(parents=True, exist_ok=True)
    yield local
    uploaded = publish(local, location, skip)
    if is_remote(location):
        print(f"storage: {uploaded} files uploaded to {location}", flush=True)
