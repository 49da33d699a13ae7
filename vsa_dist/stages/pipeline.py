"""``vsa pipeline``: the local single-node debug mode — shards → features → alignment → generator, each
trained, tested once and registered in MLflow, then a report page (``vsa report``), in one run folder.

    vsa pipeline                                   # flickr8k-mini, outputs under runs/mini/
    vsa pipeline --data ../shared/data/flickr8k --run-dir runs/flickr8k
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.config import option
from vsa_dist.paths import data_root, runs_root
from vsa_dist.stages import features as features_stage
from vsa_dist.stages import report as report_stage
from vsa_dist.stages import shards as shards_stage
from vsa_dist.stages import train_align as align_stage
from vsa_dist.stages import train_mrnn as mrnn_stage


@dataclass
class PipelineConfig(cfglib.Config):
    """Run the whole pipeline locally on one machine."""

    data: str = option("", "dataset folder; default $VSA_DATA_ROOT/flickr8k-mini (../shared/data)")
    format: str = option("flickr8k", "dataset format (see vsa shards build)", choices=shards_stage.FORMATS)
    regions: str = option("roi", "region features (see vsa features)", choices=features_stage.REGION_MODES)
    run_dir: str = option("", "where every stage writes; default runs/mini")
    align_preset: str = option("train_align_modern", "alignment preset (train_align = the paper)")
    align_epochs: int = option(8, "alignment epochs", range="[1, inf)")
    align_batch_size: int = option(20, "alignment pairs per step (the mini set has 100 train images)", range="[1, inf)")
    mrnn_preset: str = option("train_mrnn_modern", "generator preset (train_mrnn = the paper)")
    mrnn_epochs: int = option(6, "generator epochs", range="[1, inf)")
    mrnn_batch_size: int = option(50, "generator pairs per step", range="[1, inf)")
    progress: bool = option(True, "progress bars")

    def validate(self) -> None:
        if not self.data:
            self.data = str(data_root() / "flickr8k-mini")
        if not self.run_dir:
            self.run_dir = str(runs_root() / "mini")
        for key, preset in (("align_preset", self.align_preset), ("mrnn_preset", self.mrnn_preset)):
            if not cfglib.preset_exists(preset):
                raise cfglib.ConfigError(f"{key} {preset!r}: no such preset in vsa_dist/presets/")

    def check_inputs(self) -> None:
        if not storage.exists(self.data):
            raise cfglib.ConfigError(f"data {self.data!r}: no such dataset folder (set --data or VSA_DATA_ROOT)")


def run(cfg: PipelineConfig) -> dict:
    from vsa_dist.tracking import check_tracking_store

    check_tracking_store()  # before minutes of shards and features, not after them
    shards, features = storage.join(cfg.run_dir, "shards"), storage.join(cfg.run_dir, "features")
    results: dict = {}
    start = time.time()
    results["shards"] = shards_stage.run(cfglib.ready(shards_stage.ShardsConfig, None, {
        "format": cfg.format, "root": cfg.data, "out": shards, "progress": cfg.progress}))
    results["features"] = features_stage.run(cfglib.ready(features_stage.FeaturesConfig, None, {
        "shards": shards, "out": features, "regions": cfg.regions,
        "progress": cfg.progress}))
    results["align"] = align_stage.run(cfglib.ready(align_stage.AlignConfig, cfg.align_preset, {
        "features": features, "out": storage.join(cfg.run_dir, "align"), "epochs": cfg.align_epochs,
        "batch_size": cfg.align_batch_size, "progress": cfg.progress}))
    results["mrnn"] = mrnn_stage.run(cfglib.ready(mrnn_stage.MRNNConfig, cfg.mrnn_preset, {
        "features": features, "out": storage.join(cfg.run_dir, "mrnn"), "epochs": cfg.mrnn_epochs,
        "batch_size": cfg.mrnn_batch_size, "progress": cfg.progress}))
    results["report"] = report_stage.run(cfglib.ready(report_stage.ReportConfig, None, {
        "run": [cfg.run_dir], "features": features}))
    print(summary(cfg, results, time.time() - start), flush=True)
    return results


def summary(cfg: PipelineConfig, results: dict, seconds: float) -> str:
    """The closing lines a person reads: one unit per kind of number (retrieval R@K in %, caption scores x 100 as
    papers print them), what was registered, and where to look next."""
    from vsa_dist.tracking import tracking_uri

    retrieval, captions = results["align"].get("test", {}), results["mrnn"].get("test", {})

    def pct(direction: str, k: str) -> str:
        value = retrieval.get(direction, {}).get(k)
        return "–" if value is None else f"{value:.1f}"

    def x100(metric: str) -> str:
        value = captions.get(metric)
        return "–" if value is None else f"{100 * value:.1f}"

    registered = []
    for stage in ("align", "mrnn"):
        done = results[stage].get("registered") or {}
        if done:
            alias = f" (now @{done['alias']})" if done.get("alias") else ""
            registered.append(f"models:/{done['name']}/{done['version']}{alias}")
    return "\n".join([
        f"pipeline: done in {seconds / 60:.1f} min; outputs under {cfg.run_dir}",
        f"  test retrieval, R@1 / R@5 / R@10 (%): annotation {pct('annotation', 'r1')} / {pct('annotation', 'r5')} / "
        f"{pct('annotation', 'r10')}, search {pct('search', 'r1')} / {pct('search', 'r5')} / {pct('search', 'r10')}",
        f"  test captions (x 100): BLEU-4 {x100('bleu4')}, METEOR {x100('meteor')}, CIDEr {x100('cider')}",
        f"  registered: {', '.join(registered) or 'nothing'}",
        f"  the report: {results['report']['out']}",
        f"  MLflow: {tracking_uri()}" if tracking_uri().startswith("http") else
        f"  MLflow: mlflow ui --backend-store-uri {tracking_uri()}",
        "  next: vsa caption IMAGE_OR_FOLDER --html captions.html; vsa search \"a sentence\" FOLDER",
    ])


def main(argv: list[str] | None = None) -> dict:
    return cfglib.run_stage(PipelineConfig, run, argv, prog="vsa pipeline", preset=None)
