"""Writes a :class:`Catalog` as WebDataset tar shards with a manifest; reads the manifest back.

Layout of an output folder (documented in shards/FORMAT.md)::

    manifest.json             counts, per-shard sha256, source, settings, vocabulary
    rejects.jsonl             one line per input that is not in a shard, with file and reason
    {split}-{000000..}.tar    samples: {key}.jpg (original bytes) + {key}.json
    _state/{shard}.json       per-shard completion record: what makes a rerun resume

A shard is written under a temporary name and renamed into place, then its completion record is
written the same way, so a killed build leaves either a finished, recorded shard or nothing. A rerun
skips a shard whose record matches both the planned contents and the file's sha256, and rebuilds
any other.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import webdataset as wds
from tqdm import tqdm

from vsa_dist import console, storage
from vsa_dist.data.images import ImageRejected, check_jpeg
from vsa_dist.data.manifests import MANIFEST, load_manifest  # noqa: F401  (its readers import it from here too)
from vsa_dist.data.sources import Catalog, ImageEntry, image_rejects
from vsa_dist.data.text import VOCAB_MIN_COUNT, build_vocab
from vsa_dist.io import (
    STATE_DIR,
    atomic_open,
    atomic_write_json,
    completed_record,
    remove_leftovers,
    remove_stale_shards,
    sha256_file,
    temp_path,
)

REJECTS = "rejects.jsonl"
SHARD_FORMAT_VERSION = 1


def _plan_digest(split: str, entries: list[ImageEntry], max_pixels: int) -> str:
    """What a shard is meant to hold; an input that changed since the last build changes it."""
    digest = hashlib.sha256(f"v{SHARD_FORMAT_VERSION}:{split}:{max_pixels}".encode())
    for e in entries:
        try:
            st = e.path.stat()
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None
        digest.update(json.dumps([e.key, e.image_id, str(e.path), stamp, [s["raw"] for s in e.sentences],
                                  [s["tokens"] for s in e.sentences]]).encode())
    return digest.hexdigest()


def _sample_meta(entry: ImageEntry, width: int, height: int, fmt: str) -> dict[str, Any]:
    return {
        "image_id": entry.image_id, "file_name": entry.file_name, "split": entry.split, "source_format": fmt,
        "width": width, "height": height,
        "sentences": [{"raw": s["raw"], "tokens": s["tokens"]} for s in entry.sentences],
    }


def _write_shard(path: Path, entries: list[ImageEntry], fmt: str, max_pixels: int) -> dict[str, Any]:
    """Write one shard atomically; return its completion record (the rejects it found included)."""
    rejects: list[dict[str, Any]] = []
    samples = sentences = 0
    fd, tmp = temp_path(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            writer = wds.TarWriter(fh, mtime=0)  # fixed mtime: same inputs, same bytes, same sha256
            for entry in entries:
                try:
                    data = entry.path.read_bytes()
                except FileNotFoundError:
                    reason = ("missing-file", f"image file not found: {entry.path}")
                except OSError as err:
                    reason = ("unreadable-file", f"cannot read {entry.path}: {err}")
                else:
                    try:
                        width, height = check_jpeg(data, max_pixels)
                        reason = None
                    except ImageRejected as err:
                        reason = (err.code, f"{entry.path}: {err}")
                if reason is not None:
                    rejects.extend(image_rejects(reason[0], reason[1], entry.ref, entry.file_name, entry.sentences))
                    continue
                writer.write({"__key__": entry.key, "jpg": data, "json": _sample_meta(entry, width, height, fmt)})
                samples += 1
                sentences += len(entry.sentences)
            writer.close()
            fh.flush()
            os.fsync(fh.fileno())
        if samples:
            os.replace(tmp, path)
        else:
            Path(tmp).unlink()
            path.unlink(missing_ok=True)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"shard": path.name, "samples": samples, "sentences": sentences, "rejects": rejects,
            "sha256": sha256_file(path) if samples else None, "bytes": path.stat().st_size if samples else 0}


def write_shards(catalog: Catalog, out_dir: Path, samples_per_shard: int = 500, max_pixels: int = 89_478_485,
                 vocab_min_count: int = VOCAB_MIN_COUNT, vocab_splits: tuple[str, ...] = ("train",),
                 config: dict[str, Any] | None = None, progress: bool = True) -> dict[str, Any]:
    """Write (or resume writing) all shards and the manifest; return the manifest. The catalog is read a shard at a
    time and the rejects are written as a stream: memory does not grow with the data set."""
    start = time.time()
    out_dir.mkdir(parents=True, exist_ok=True)
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(exist_ok=True)
    remove_leftovers(out_dir, state_dir)

    sizes = catalog.split_sizes()
    planned = {f"{split}-{index:06d}.tar" for split, size in sizes.items()
               for index in range(-(-size // samples_per_shard))}
    remove_stale_shards(out_dir, state_dir, planned)

    records: list[dict[str, Any]] = []
    built = skipped = 0
    bar = tqdm(total=sum(sizes.values()), desc="shards", unit="img", file=console.err(),
               disable=None if progress else True)
    for split in sizes:
        for index, chunk in enumerate(catalog.entries(split, samples_per_shard)):
            name = f"{split}-{index:06d}.tar"
            shard_path, state_path = out_dir / name, state_dir / f"{name}.json"
            plan = _plan_digest(split, chunk, max_pixels)
            record = completed_record(state_path, shard_path, plan)
            if record is None:
                record = _write_shard(shard_path, chunk, catalog.format, max_pixels)
                record["plan"] = plan
                record["split"] = split
                atomic_write_json(state_path, record)
                built += 1
            else:
                skipped += 1
            records.append(record)
            bar.update(len(chunk))
    bar.close()

    by_reason: Counter[str] = Counter()
    with atomic_open(out_dir / REJECTS) as fh:
        for reject in itertools.chain(catalog.rejects(), (r for rec in records for r in rec["rejects"])):
            fh.write((json.dumps(reject, ensure_ascii=False) + "\n").encode())
            by_reason[f"{reject['kind']}:{reject['reason']}"] += 1

    splits: dict[str, dict[str, Any]] = {}
    for rec in records:
        info = splits.setdefault(rec["split"], {"images": 0, "sentences": 0, "shards": []})
        info["images"] += rec["samples"]
        info["sentences"] += rec["sentences"]
        if rec["samples"]:
            info["shards"].append({k: rec[k] for k in ("shard", "samples", "sentences", "sha256", "bytes")})

    written_images = sum(s["images"] for s in splits.values())
    written_sentences = sum(s["sentences"] for s in splits.values())
    rejected_images = sum(n for reason, n in by_reason.items() if reason.startswith("image:"))
    rejected_sentences = sum(n for reason, n in by_reason.items() if reason.startswith("sentence:"))
    if (
        written_images + rejected_images != catalog.input_images
        or written_sentences + rejected_sentences != catalog.input_sentences
    ):
        raise AssertionError(  # a bug in this module, never an input problem: fail loudly
            f"accounting broken: images {written_images}+{rejected_images}!={catalog.input_images}, "
            f"sentences {written_sentences}+{rejected_sentences}!={catalog.input_sentences}")

    # Built on what was written: a rejected image's captions must not shape the vocabulary.
    rejected_files = {r["image"] for rec in records for r in rec["rejects"] if r["kind"] == "image"}
    vocab_words, vocab_counts = build_vocab(
        (tokens for name, tokens in catalog.tokens(vocab_splits) if name not in rejected_files), vocab_min_count)
    manifest = {
        "format_version": SHARD_FORMAT_VERSION,
        "source": {"format": catalog.format, "files": {str(p): sha256_file(p) for p in catalog.source_files}},
        "config": config or {},
        "splits": splits,
        "counts": {
            "images": {"input": catalog.input_images, "written": written_images, "rejected": rejected_images},
            "sentences": {
                "input": catalog.input_sentences,
                "written": written_sentences,
                "rejected": rejected_sentences,
            },
        },
        "rejects": {"file": REJECTS, "by_reason": dict(by_reason)},
        "repairs": catalog.repairs,
        "vocab": {
            "min_count": vocab_min_count,
            "splits": list(vocab_splits),
            "size": len(vocab_words),
            "words": vocab_words,
            "counts": vocab_counts,
        },
        "build": {"shards_built": built, "shards_reused": skipped, "seconds": round(time.time() - start, 2)},
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    return manifest


def _every_shard(urls):
    return urls


def read_samples(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Every sample of ``paths`` in order, in this one process, even inside a DDP worker (webdataset
    would otherwise expect the shards to be split over ranks). Remote shards are read from this node's cache."""
    paths = [storage.fetch(p) for p in paths]

    yield from wds.WebDataset(paths, shardshuffle=False, empty_check=False, nodesplitter=_every_shard)


def jpegs_by_id(shards_dir: Path | str, splits: list[str] | tuple[str, ...] | None,
                wanted: set[str]) -> dict[str, bytes]:
    """The JPEG bytes of the ``wanted`` image ids among the given splits' samples (all splits if None), in one read."""
    found = {}
    for sample in read_samples(shard_paths(shards_dir, splits)):
        image_id = json.loads(sample["json"])["image_id"]
        if image_id in wanted:
            found[image_id] = sample["jpg"]
    return found


def shard_paths(shards_dir: Path | str, splits: list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Shard files (paths or URIs, as the folder is) of the given splits (all splits if None), in manifest order."""
    manifest = load_manifest(shards_dir)
    return [storage.join(shards_dir, shard["shard"])
            for split, info in manifest["splits"].items() if splits is None or split in splits
            for shard in info["shards"]]
