"""``vsa pipeline``: the local single-node debug mode — shards → features → alignment → generator, each
trained, tested once and registered in MLflow, then a report page (``vsa report``), in one run folder.

    vsa pipeline                                   # flickr8k-mini, outputs under runs/mini/
    vsa pipeline --data ../shared/data/flickr8k --run-dir runs/flickr8k
"""

from __future__ import annotations

import json
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

    data: str = option("flickr8k-mini", "dataset folder, or the name of one under $VSA_DATA_ROOT (default: "
                       "../shared/data beside the checkout)")
    format: str = option("flickr8k", "dataset format (see vsa shards build)", choices=shards_stage.FORMATS)
    regions: str = option("roi", "region features (see vsa features)", choices=features_stage.REGION_MODES)
    name: str = option("", "the run's folder under the runs root ($VSA_RUNS_ROOT, default the checkout's runs/); "
                       "default: the data folder's name (mini for flickr8k-mini)")
    run_dir: str = option("", "where every stage writes, in place of the runs root's NAME folder")
    align_preset: str = option("train_align_modern", "alignment preset (train_align = the paper)")
    align_epochs: int = option(8, "alignment epochs", range="[1, inf)")
    align_batch_size: int = option(20, "alignment pairs per step (the mini set has 100 train images)", range="[1, inf)")
    mrnn_preset: str = option("train_mrnn_attention", "generator preset (train_mrnn = the paper; the default "
                                                      "attends over the regions: on the mini set its captions differ "
                                                      "from image to image, the plain LSTM's were one string)")
    mrnn_epochs: int = option(8, "generator epochs", range="[1, inf)")
    mrnn_batch_size: int = option(50, "generator pairs per step", range="[1, inf)")
    progress: bool = option(True, "progress bars")

    def validate(self) -> None:
        if not self.data:
            raise cfglib.ConfigError("data: empty (a dataset folder, or a name under $VSA_DATA_ROOT)")
        if "/" not in self.data and not storage.exists(self.data):  # a bare name: one of the shared data sets
            self.data = str(data_root() / self.data)
        if not self.run_dir:
            data_name = self.data.rstrip("/").rsplit("/", 1)[-1]  # a path or a URI (s3://bucket/flickr8k)
            name = self.name or {"flickr8k-mini": "mini"}.get(data_name, data_name)
            self.run_dir = str(runs_root() / name)
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
    minutes: dict[str, float] = {}
    start = time.time()

    def stage(name: str, run_stage, config) -> None:
        began = time.time()
        results[name] = run_stage(config)
        minutes[name] = round((time.time() - began) / 60, 2)

    stage("shards", shards_stage.run, cfglib.ready(shards_stage.ShardsConfig, None, {
        "format": cfg.format, "root": cfg.data, "out": shards, "progress": cfg.progress}))
    stage("features", features_stage.run, cfglib.ready(features_stage.FeaturesConfig, None, {
        "shards": shards, "out": features, "regions": cfg.regions, "progress": cfg.progress}))
    stage("align", align_stage.run, cfglib.ready(align_stage.AlignConfig, cfg.align_preset, {
        "features": features, "out": storage.join(cfg.run_dir, "align"), "epochs": cfg.align_epochs,
        "batch_size": cfg.align_batch_size, "progress": cfg.progress}))
    stage("mrnn", mrnn_stage.run, cfglib.ready(mrnn_stage.MRNNConfig, cfg.mrnn_preset, {
        "features": features, "out": storage.join(cfg.run_dir, "mrnn"), "epochs": cfg.mrnn_epochs,
        "batch_size": cfg.mrnn_batch_size, "progress": cfg.progress}))
    stage("report", report_stage.run, cfglib.ready(report_stage.ReportConfig, None, {
        "run": [cfg.run_dir], "features": features}))
    seconds = time.time() - start
    # the run's record: the whole command's wall time beside each model's test scores (docs/results "quick")
    record = {"kind": "pipeline", "config": cfglib.to_dict(cfg), "minutes": round(seconds / 60, 2),
              "stage_minutes": minutes,
              **{name: {key: results[name].get(key) for key in ("run_id", "test", "registered", "train_minutes")}
                 for name in ("align", "mrnn")}}
    storage.write_bytes(storage.join(cfg.run_dir, "summary.json"), (json.dumps(record, indent=1) + "\n").encode())
    print(summary(cfg, results, seconds), flush=True)
    return results


def summary(cfg: PipelineConfig, results: dict, seconds: float) -> str:
    """The closing lines a person reads: one unit per kind of number (retrieval R@K in %, caption scores x 100 as
    papers print them), what was registered, and where to look next."""
    from vsa_dist.eval.captions import captions_line
    from vsa_dist.eval.retrieval import retrieval_line
    from vsa_dist.tracking import tracking_uri

    registered = []
    for stage in ("align", "mrnn"):
        done = results[stage].get("registered") or {}
        if done:
            alias = f" (now @{done['alias']})" if done.get("alias") else ""
            registered.append(f"models:/{done['name']}/{done['version']}{alias}")
    return "\n".join([
        f"pipeline: done in {seconds / 60:.1f} min; outputs under {cfg.run_dir}",
        f"  test retrieval: {retrieval_line(results['align'].get('test'))}",
        f"  test captions: {captions_line(results['mrnn'].get('test'))}",
        f"  registered: {', '.join(registered) or 'nothing'}",
        f"  the report: {results['report']['out']}",
        f"  MLflow: {tracking_uri()}" if tracking_uri().startswith("http") else
        f"  MLflow: mlflow ui --backend-store-uri {tracking_uri()}",
        "  next: vsa caption IMAGE_OR_FOLDER --html captions.html; vsa search \"a sentence\" FOLDER",
        *([SMOKE_TEST] if cfg.data.rstrip("/").endswith("flickr8k-mini") else []),
    ])


# What the mini run is, said where its poor captions are printed: a check that every stage works, not a model.
SMOKE_TEST = ("  this was a smoke test (100 training images teach little); a model worth using, from full Flickr8k: "
              "vsa pipeline --preset pipeline_quick")


def main(argv: list[str] | None = None) -> dict:
    return cfglib.run_stage(PipelineConfig, run, argv, prog="vsa pipeline", preset=None)
