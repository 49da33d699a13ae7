"""``vsa pipeline``: the local single-node debug mode — every working stage, in order, one run folder.

    vsa pipeline                                   # flickr8k-mini, outputs under runs/mini/
    vsa pipeline --data ../shared/data/flickr8k --run-dir runs/flickr8k
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from vsa_dist import config as cfglib
from vsa_dist.paths import data_root, runs_root
from vsa_dist.stages import features as features_stage
from vsa_dist.stages import shards as shards_stage
from vsa_dist.stages import train_align as align_stage


@dataclass
class PipelineConfig:
    """Run the whole pipeline locally on one machine."""

    data: str = field(default="", metadata={"help": "dataset folder; default $VSA_DATA_ROOT/flickr8k-mini (../shared/data)"})
    format: str = field(default="flickr8k", metadata={"help": "dataset format (see vsa shards build)"})
    regions: str = field(default="roi", metadata={"help": "region features: roi or crop (see vsa features)"})
    run_dir: str = field(default="", metadata={"help": "where every stage writes; default runs/mini"})
    align_preset: str = field(default="train_align_modern", metadata={"help": "alignment preset (train_align = the paper)"})
    align_epochs: int = field(default=8, metadata={"help": "alignment epochs"})
    align_batch_size: int = field(default=20, metadata={"help": "alignment pairs per step (the mini set has 100 train images)"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def validate(self) -> None:
        if not self.data:
            self.data = str(data_root() / "flickr8k-mini")
        if not self.run_dir:
            self.run_dir = str(runs_root() / "mini")
        if not cfglib.preset_exists(self.align_preset):
            raise cfglib.ConfigError(f"align_preset {self.align_preset!r}: no such preset in vsa_dist/presets/")
        if not Path(self.data).is_dir():
            raise cfglib.ConfigError(f"data {self.data!r}: no such dataset folder (set --data or VSA_DATA_ROOT)")


def run(cfg: PipelineConfig) -> dict:
    run_dir = Path(cfg.run_dir)
    results: dict = {}
    start = time.time()
    results["shards"] = shards_stage.run(cfglib.resolve(shards_stage.ShardsConfig, "shards", {
        "format": cfg.format, "root": cfg.data, "out": str(run_dir / "shards"), "progress": cfg.progress}))
    results["features"] = features_stage.run(cfglib.resolve(features_stage.FeaturesConfig, "features", {
        "shards": str(run_dir / "shards"), "out": str(run_dir / "features"), "regions": cfg.regions,
        "progress": cfg.progress}))
    results["align"] = align_stage.run(cfglib.resolve(align_stage.AlignConfig, cfg.align_preset, {
        "features": str(run_dir / "features"), "out": str(run_dir / "align"), "epochs": cfg.align_epochs,
        "batch_size": cfg.align_batch_size, "progress": cfg.progress}))
    print(f"pipeline: done in {time.time() - start:.1f}s; outputs under {run_dir}")
    return results


def main(argv: list[str] | None = None) -> dict:
    return cfglib.run_stage(PipelineConfig, run, argv, prog="vsa pipeline", preset="pipeline")
