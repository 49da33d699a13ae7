"""``vsa features``: image shards → region-feature shards (whole image + top-19 regions), with Ray Data.

    vsa features --shards runs/flickr8k/shards --out runs/flickr8k/features                  # roi, grid
    vsa features --shards runs/mini/shards --out runs/mini/features-crop --regions crop
    vsa features --shards S --out F --proposals selective-search

The stream: ``read_webdataset`` (JPEG bytes) → [selective-search proposals, plain tasks] → CNN actors
(backbone loaded once per actor, ``num_gpus=1`` each when the cluster has GPUs) → the driver, which
writes one feature shard per image shard as its rows arrive. Nothing is collected, so memory does not
grow with the data set. A rerun redoes only the shards that are missing or damaged.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import ray
from ray.data import ActorPoolStrategy

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.configs import FeaturesConfig
from vsa_dist.console import progress_bar
from vsa_dist.data.assembler import REJECTS, DamagedInput, ShardAssembler, account, check_sources, plan_shards, resume
from vsa_dist.data.shards import MANIFEST, load_manifest
from vsa_dist.features.extract import OUTPUT_COLUMNS, ExtractorSettings, RegionExtractor, add_proposals, describe
from vsa_dist.features.format import FEATURES_FORMAT_VERSION
from vsa_dist.io import atomic_write_json
from vsa_dist.models.backbone import fast_bf16, load_backbone
from vsa_dist.ray_env import check_placeable, ensure_ray
from vsa_dist.stages import run_stage


def _settings(cfg: FeaturesConfig, cluster: dict[str, float]) -> tuple[ExtractorSettings, dict[str, Any]]:
    """Extractor settings and the CNN actors' ``map_batches`` resources on this cluster."""
    gpus = int(cluster.get("GPU", 0))
    device = cfg.device if cfg.device != "auto" else ("cuda" if gpus else "cpu")
    # Judged on this (the driver's) machine for CPUs: set it explicitly where workers' CPUs differ.
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if fast_bf16(device) else "fp32")
    cpus = max(1, int(cluster.get("CPU", 1)))
    if device == "cuda":
        threads, actors = cfg.threads, cfg.actors or max(1, gpus)
        remote = {"num_gpus": 1, "num_cpus": 1}
    else:
        threads = min(cfg.threads, cpus)
        actors = cfg.actors or max(1, cpus // threads)
        if cfg.proposals == "grid":  # the actors are the work: they get every CPU
            remote = {"num_cpus": threads}
        else:  # the proposals are the work (0.16 s an image, benchmarks/extract.py): leave them the CPUs
            remote = {"num_cpus": 1}
            actors = cfg.actors or 1
    settings = ExtractorSettings(
        backbone=cfg.backbone, weights=cfg.weights, region_mode=cfg.regions, proposals=cfg.proposals,
        num_regions=cfg.num_regions, nms_iou=cfg.nms_iou, roi_size=cfg.roi_size, max_proposals=cfg.max_proposals,
        cnn_batch=cfg.cnn_batch or (64 if device == "cuda" else 4), threads=threads, device=device,
        precision=precision, max_pixels=cfg.max_pixels, flip=cfg.flip, trunk_block=cfg.trunk_block,
        cnn_from=cfg.cnn_from)
    check_placeable({"CPU": remote["num_cpus"], "GPU": remote.get("num_gpus", 0)}, actors,
                    f"features ({actors} CNN actor(s) on {device})")
    return settings, {"compute": ActorPoolStrategy(size=actors), **remote}


def _stream(cfg: FeaturesConfig, settings: ExtractorSettings, remote: dict[str, Any], sources: list[str]):
    """The Ray Data stream of output rows for the given image shards."""
    # Reading a tar is I/O, not compute: it must not wait for a CPU slot the CNN actors hold.
    ds = ray.data.read_webdataset(sources, decoder=None, include_paths=False, num_cpus=0, concurrency=2)
    if cfg.proposals != "grid":
        ds = ds.map_batches(add_proposals, batch_size=8, num_cpus=1, fn_kwargs={
            "method": cfg.proposals, "max_proposals": cfg.max_proposals, "min_proposals": cfg.num_regions,
            "flip": cfg.flip})
    return ds.map_batches(RegionExtractor, fn_constructor_kwargs={"settings": settings}, batch_size=cfg.batch_size,
                          **remote)


def _file_name(meta: bytes, key: str) -> str:
    """The file a rejected sample came from, as its JSON names it (its key when the JSON is missing or broken)."""
    try:
        name = json.loads(meta).get("file_name") if meta else None
    except (ValueError, AttributeError):
        name = None
    return name if isinstance(name, str) else key


def _write(ds, assembler: ShardAssembler, images: int, progress: bool) -> tuple[float, int]:
    """Write every row; return when the first batch arrived and its size (start-up vs steady state)."""
    first: tuple[float, int] | None = None
    for batch in progress_bar(ds.iter_batches(batch_size=None, batch_format="numpy"), images, "features", progress,
                              size=lambda b: len(b["__key__"])):
        first = first or (time.time(), len(batch["__key__"]))
        for i in range(len(batch["__key__"])):
            source, key, error = batch["__url__"][i], batch["__key__"][i], batch["error"][i]
            if error:
                assembler.add(source, None, {"kind": "image", "reason": "feature-error", "detail": error,
                                             "source": source, "key": key, "image": _file_name(batch["json"][i], key)})
            else:
                assembler.add(source, {"__key__": key, **{c: batch[c][i] for c in OUTPUT_COLUMNS[2:6]}})
    return first or (time.time(), 0)


def run(cfg: FeaturesConfig) -> dict[str, Any]:
    with storage.output_folder(cfg.out, "features") as out_dir:
        return _run(cfg, cfg.shards, out_dir)


def _run(cfg: FeaturesConfig, shards_dir: str, out_dir: Path) -> dict[str, Any]:
    start = time.time()
    shard_manifest = load_manifest(shards_dir)
    splits = cfg.splits or sorted(shard_manifest["splits"])
    ray = ensure_ray(cfg.progress)
    settings, remote = _settings(cfg, ray.cluster_resources())
    described = describe(settings, load_backbone(cfg.backbone, cfg.weights).spec.as_dict())
    placement = {"device": settings.device, "actors": remote["compute"].max_size, "threads": settings.threads,
                 "cnn_batch": settings.cnn_batch}

    plans = plan_shards(shards_dir, shard_manifest, splits, described)
    state_dir, records, pending = resume(out_dir, plans)
    check_sources(pending, f"vsa shards build --out {shards_dir}")
    print(f"features: {len(plans)} shards planned, {len(records)} already complete, {len(pending)} to extract "
          f"({settings.region_mode} regions, {settings.proposals} proposals, {settings.precision}, {placement})",
          flush=True)
    extract_start = first_at = time.time()
    first_rows = 0
    if pending:
        assembler = ShardAssembler(out_dir, state_dir, pending)
        first_at, first_rows = _write(_stream(cfg, settings, remote, [p.source for p in pending]), assembler,
                                       sum(p.expected for p in pending), cfg.progress)
        records.update(assembler.close())
    extract_seconds, steady_seconds = time.time() - extract_start, time.time() - first_at

    split_info, rejects, counts = account(out_dir, plans, records, splits)
    extracted = sum(p.expected for p in pending)
    manifest = {
        "kind": "features",
        "format_version": FEATURES_FORMAT_VERSION,
        "settings": described,
        "source": {
            "shards": shards_dir,
            "manifest_sha256": hashlib.sha256(storage.read_bytes(storage.join(shards_dir, MANIFEST))).hexdigest(),
        },
        "config": cfglib.to_dict(cfg),
        "splits": split_info,
        "counts": {"images": counts},
        "rejects": {"file": REJECTS, "by_reason": dict(Counter(r["reason"] for r in rejects))},
        "vocab": shard_manifest["vocab"],
        "build": {
            "shards_built": len(pending),
            "shards_reused": len(plans) - len(pending),
            "images_extracted": extracted,
            "extract_seconds": round(extract_seconds, 2),
            "images_per_s": round(extracted / extract_seconds, 2) if extracted else None,
            # after the first batch is back: actors started, model loaded, pipeline full
            "startup_seconds": round(extract_seconds - steady_seconds, 2),
            "steady_images_per_s": round((extracted - first_rows) / steady_seconds, 2)
            if extracted > first_rows and steady_seconds > 0
            else None,
            "seconds": round(time.time() - start, 2),
            **placement,
        },
    }
    atomic_write_json(out_dir / MANIFEST, manifest)
    rate = f" ({manifest['build']['images_per_s']} img/s)" if extracted else ""
    print(f"features: {counts['written']} images written, {len(rejects)} rejected, {len(pending)} shards built{rate}, "
          f"{len(plans) - len(pending)} reused -> {cfg.out}", flush=True)
    return manifest


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(FeaturesConfig, run, argv, prog="vsa features", preset=None,
                            input_errors=(DamagedInput,))
