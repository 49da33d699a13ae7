"""Rows streaming back from a Ray Data job → one output tar per input shard, written atomically.

Rows of different input shards arrive interleaved and in any order. Each output shard is written to a
temporary file as its rows arrive (nothing is held in memory) and is renamed into place, with its
completion record beside it, the moment its last expected row has arrived. A run killed at any point
leaves finished, recorded shards and temporary files; the rerun removes the temporary files and
redoes only the shards without a valid record (``vsa_dist.io.completed_record``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import webdataset as wds

from vsa_dist import storage
from vsa_dist.data.shards import REJECTS
from vsa_dist.io import (
    STATE_DIR,
    atomic_write_bytes,
    atomic_write_json,
    completed_record,
    remove_leftovers,
    remove_stale_shards,
    sha256_file,
    sha256_json,
    temp_path,
)


@dataclass
class ShardPlan:
    """One output shard: made from input shard ``source``, expecting ``expected`` rows."""

    name: str
    source: str
    split: str
    expected: int
    plan: str  # digest of what the shard is meant to hold; a record for another plan is not reused
    sha256: str = ""  # the input shard's, as its folder's manifest records it


@dataclass
class _Open:
    plan: ShardPlan
    tmp: str
    fh: Any
    writer: Any  # webdataset.TarWriter
    rows: int = 0
    samples: int = 0
    rejects: list[dict[str, Any]] = field(default_factory=list)


def _source_key(source: str) -> str:
    """Ray Data names a remote file by its path without the scheme (``s3://b/k`` comes back as ``b/k``)."""
    return source.split("://", 1)[-1]


class ShardAssembler:
    def __init__(self, out_dir: Path, state_dir: Path, plans: list[ShardPlan]):
        self.out_dir, self.state_dir = out_dir, state_dir
        self.by_source = {_source_key(p.source): p for p in plans}
        self.open: dict[str, _Open] = {}
        self.records: dict[str, dict[str, Any]] = {}

    def add(self, source: str, sample: dict[str, Any] | None, reject: dict[str, Any] | None = None) -> None:
        """One row of input shard ``source``: a sample to write, or (``sample=None``) a reject."""
        source = _source_key(source)
        plan = self.by_source.get(source)
        if plan is None or plan.name in self.records:
            raise RuntimeError(f"row from {source!r}, which is not a pending shard of this run")
        state = self.open.get(source)
        if state is None:
            fd, tmp = temp_path(self.out_dir / plan.name)
            fh = os.fdopen(fd, "wb")

            state = self.open[source] = _Open(plan, tmp, fh, wds.TarWriter(fh, mtime=0))
        state.rows += 1
        if sample is None:
            state.rejects.append(reject or {})
        else:
            state.writer.write(sample)
            state.samples += 1
        if state.rows == plan.expected:
            self._finish(self.open.pop(source))
        elif state.rows > plan.expected:
            raise RuntimeError(f"{source}: more rows than the {plan.expected} it holds (a duplicated row)")

    def _finish(self, state: _Open) -> None:
        plan, path = state.plan, self.out_dir / state.plan.name
        state.writer.close()
        state.fh.flush()
        os.fsync(state.fh.fileno())
        state.fh.close()
        if state.samples:
            os.replace(state.tmp, path)
        else:  # every row rejected: no shard file, the record says so
            Path(state.tmp).unlink()
            path.unlink(missing_ok=True)
        record = {"shard": plan.name, "source": plan.source, "split": plan.split, "plan": plan.plan,
                  "samples": state.samples, "rejects": state.rejects,
                  "sha256": sha256_file(path) if state.samples else None,
                  "bytes": path.stat().st_size if state.samples else 0}
        atomic_write_json(self.state_dir / f"{plan.name}.json", record)
        self.records[plan.name] = record

    def close(self) -> dict[str, dict[str, Any]]:
        """Every planned shard's record; a shard still missing rows is an error (rows were lost)."""
        missing = {p.name: f"{self.open[key].rows if key in self.open else 0}/{p.expected}"
                   for key, p in self.by_source.items() if p.name not in self.records}
        for state in self.open.values():
            state.fh.close()
            Path(state.tmp).unlink(missing_ok=True)
        if missing:
            raise RuntimeError(f"rows missing for shards (got/expected): {missing}")
        return self.records


def plan_shards(
    source_dir: str, manifest: dict[str, Any], splits: list[str], settings: dict[str, Any]
) -> list[ShardPlan]:
    """One output shard per input shard of ``splits``; its plan digest changes with the input or the settings."""
    plans = []
    for split in splits:
        for shard in manifest["splits"][split]["shards"]:
            plans.append(ShardPlan(name=shard["shard"], source=storage.join(source_dir, shard["shard"]), split=split,
                                   expected=shard["samples"], sha256=shard["sha256"],
                                   plan=sha256_json({"input": shard["sha256"], "settings": settings})))
    return plans


class DamagedInput(ValueError):
    """An input shard is not the one its folder's manifest records."""


def check_sources(plans: list[ShardPlan], remake: str) -> None:
    """Each input shard still has the sha256 its manifest records (a local file) or exists (a storage URI, where
    hashing would mean downloading it twice): a changed or damaged input is refused before any work, naming the
    shard and what remakes it (``remake``)."""
    for plan in plans:
        if storage.is_remote(plan.source):
            ok, why = storage.exists(plan.source), "is missing"
        else:
            path = Path(plan.source)
            ok = path.is_file() and sha256_file(path) == plan.sha256
            why = "is missing" if not path.is_file() else "does not match the sha256 in its manifest"
        if not ok:
            raise DamagedInput(f"{plan.source}: input shard {why}; rebuild it ({remake})")


def resume(out_dir: Path, plans: list[ShardPlan]) -> tuple[Path, dict[str, dict[str, Any]], list[ShardPlan]]:
    """A rerun's starting point: (state folder, records of shards already complete, plans still to do)."""
    state_dir = out_dir / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir, state_dir)
    remove_stale_shards(out_dir, state_dir, {p.name for p in plans})
    records = {
        p.name: r for p in plans if (r := completed_record(state_dir / f"{p.name}.json", out_dir / p.name, p.plan))
    }
    return state_dir, records, [p for p in plans if p.name not in records]


def account(out_dir: Path, plans: list[ShardPlan], records: dict[str, dict[str, Any]],
            splits: list[str]) -> tuple[dict[str, dict[str, Any]], list[dict[str, Any]], dict[str, int]]:
    """Every input sample is written or rejected: OUT/rejects.jsonl, the manifest's per-split shard lists, the
    counts. Returns (splits, rejects, counts)."""
    ordered = [records[p.name] for p in plans]
    rejects = [r for rec in ordered for r in rec["rejects"]]
    atomic_write_bytes(out_dir / REJECTS, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rejects).encode())
    split_info: dict[str, dict[str, Any]] = {s: {"images": 0, "shards": []} for s in splits}
    for rec in ordered:
        split_info[rec["split"]]["images"] += rec["samples"]
        if rec["samples"]:
            split_info[rec["split"]]["shards"].append({k: rec[k] for k in ("shard", "samples", "sha256", "bytes")})
    inputs = sum(p.expected for p in plans)
    written = sum(s["images"] for s in split_info.values())
    if written + len(rejects) != inputs:
        raise AssertionError(f"accounting broken: {written} written + {len(rejects)} rejected != {inputs} inputs")
    return split_info, rejects, {"input": inputs, "written": written, "rejected": len(rejects)}
