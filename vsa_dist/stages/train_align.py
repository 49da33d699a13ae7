"""``vsa train-align``: the BRNN alignment model, trained with Ray Train (DDP), selected on dev, tested once.

    vsa train-align --features runs/flickr8k/features                       # the paper's settings
    vsa train-align --features runs/flickr8k/features --preset train_align_modern
    vsa train-align --features runs/flickr8k/features --resume              # continue the last run

Per epoch every worker streams its share of the train images from the feature shards (Ray Data,
shuffled), pairs each image with one of its sentences drawn at random, and steps; rank 0 then scores
the dev split (R@1/5/10 both ways), keeps the best model, logs to MLflow and reports a checkpoint.
After training, the best-on-dev model is evaluated on test once and registered as ``vsa-align``; the alias
``champion`` moves to it when it beats the holder's dev R@1+5+10 sum on the same dev data.

The recipe (config, model, stream, step, dev score, ending) is ``vsa_dist/recipes/align.py``; the driver that runs
it, ``vsa_dist/training/run.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from vsa_dist.recipes.align import AlignTask
from vsa_dist.stages import run_stage
from vsa_dist.training.run import run_recipe


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(AlignTask.config, functools.partial(run_recipe, AlignTask), argv, prog="vsa train-align",
                            preset=AlignTask.config.PRESET)
