"""``vsa pipeline``: the local single-node debug mode — shards → features → alignment → generator, each
trained, tested once and registered in MLflow, then a report page (``vsa report``), in one run folder. An alignment
preset that trains the CNN's upper blocks on cached trunk maps (encoder cached) adds their two feature stages; one that
trains its CNN (cached or full) adds a third, the trained CNN's features, which the generator reads.

    vsa pipeline                                   # flickr8k-mini, outputs under runs/mini/
    vsa pipeline --data ../shared/data/flickr8k --run-dir runs/flickr8k
"""

from __future__ import annotations

import functools
import json
import time

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.configs import PipelineConfig
from vsa_dist.data.assembler import DamagedInput
from vsa_dist.data.sources import InputFormatError
from vsa_dist.eval.captions import captions_line
from vsa_dist.eval.retrieval import retrieval_line
from vsa_dist.recipes.align import AlignTask
from vsa_dist.recipes.mrnn import MRNNTask
from vsa_dist.stages import features as features_stage
from vsa_dist.stages import report as report_stage
from vsa_dist.stages import run_stage
from vsa_dist.stages import shards as shards_stage
from vsa_dist.tracking import check_tracking_store, tracking_uri
from vsa_dist.training.run import run_recipe


def run(cfg: PipelineConfig) -> dict:
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
    align_features, augment = features, []
    encoder = cfglib.layered(AlignTask.config, cfg.align_preset, {})["encoder"]
    if encoder == "cached":
        # the CNN's upper blocks train on trunk maps: every image's, and the train images' mirrored (the augmentation
        # a cache can hold)
        align_features = storage.join(cfg.run_dir, f"trunk{cfg.trunk_block}")
        mirrored = f"{align_features}-flip"
        stage("trunk", features_stage.run, cfglib.ready(features_stage.FeaturesConfig, None, {
            "shards": shards, "out": align_features, "trunk_block": cfg.trunk_block, "progress": cfg.progress}))
        stage("trunk_mirrored", features_stage.run, cfglib.ready(features_stage.FeaturesConfig, None, {
            "shards": shards, "out": mirrored, "trunk_block": cfg.trunk_block, "flip": True, "splits": ["train"],
            "progress": cfg.progress}))
        augment = [mirrored]
    stage("align", functools.partial(run_recipe, AlignTask), cfglib.ready(AlignTask.config, cfg.align_preset, {
        "features": align_features, "augment": augment, "out": storage.join(cfg.run_dir, "align"),
        "epochs": cfg.align_epochs, "batch_size": cfg.align_batch_size, "alias": cfg.alias,
        "progress": cfg.progress}))
    caption_features = features
    if encoder != "frozen":
        # the generator reads the trained CNN's features: on Flickr8k the same recipe gains 12.7 test CIDEr over the
        # pretrained CNN's (docs/generation.md), and the registered captioner carries that CNN for new images
        caption_features = storage.join(cfg.run_dir, "features-trained")
        stage("features_trained", features_stage.run, cfglib.ready(features_stage.FeaturesConfig, None, {
            "shards": shards, "out": caption_features, "regions": cfg.regions,
            "cnn_from": storage.join(cfg.run_dir, "align", "best.pt"), "progress": cfg.progress}))
    stage("mrnn", functools.partial(run_recipe, MRNNTask), cfglib.ready(MRNNTask.config, cfg.mrnn_preset, {
        "features": caption_features, "out": storage.join(cfg.run_dir, "mrnn"), "epochs": cfg.mrnn_epochs,
        "batch_size": cfg.mrnn_batch_size, "alias": cfg.alias, "progress": cfg.progress}))
    stage("report", report_stage.run, cfglib.ready(report_stage.ReportConfig, None, {
        "run": [cfg.run_dir], "features": caption_features, "align_features": align_features if augment else ""}))
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
        next_commands(cfg, results),
        *([SMOKE_TEST] if cfg.smoke_test else []),
    ])


def next_commands(cfg: PipelineConfig, results: dict) -> str:
    """What to run next with the models just trained: the commands' defaults (@champion), or, when the models took
    another alias (the smoke test's @smoke), that alias named."""
    if cfg.alias == "champion":
        return "  next: vsa caption IMAGE_OR_FOLDER --html captions.html; vsa search \"a sentence\" FOLDER"
    names = {stage: (results[stage].get("registered") or {}).get("name") or default
             for stage, default in (("mrnn", "vsa-captioner"), ("align", "vsa-align"))}
    return (f"  next: vsa caption IMAGE_OR_FOLDER --model models:/{names['mrnn']}@{cfg.alias}; vsa search "
            f"\"a sentence\" FOLDER --model models:/{names['align']}@{cfg.alias}")


# What the mini run is, said where its poor captions are printed: a check that every stage works, not a model.
SMOKE_TEST = ("  this was a smoke test (100 training images teach little); a model worth using, from full Flickr8k: "
              "vsa pipeline --preset pipeline_quick")


def main(argv: list[str] | None = None) -> dict:
    # the stages' own bad-input errors end the pipeline as they end the stage: one line naming the file, exit 2
    return run_stage(PipelineConfig, run, argv, prog="vsa pipeline", preset=None,
                     input_errors=(InputFormatError, DamagedInput))
