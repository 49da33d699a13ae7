"""``vsa train-mrnn``: the multimodal RNN generator, trained with Ray Train (DDP), selected on dev CIDEr.

    vsa train-mrnn --features runs/flickr8k/features                        # the paper's RNN (Adam: dev chose it)
    vsa train-mrnn --features runs/flickr8k/features --preset train_mrnn_modern   # LSTM, Adam, cosine
    vsa train-mrnn --features runs/flickr8k/features --resume               # continue the last run
    vsa train-mrnn --features runs/flickr8k/features --preset train_mrnn_scst \
        --init runs/flickr8k/mrnn/best.pt --out runs/flickr8k/mrnn-scst       # self-critical, on CIDEr-D

Per epoch every worker streams its share of the train images (Ray Data, shuffled) and learns every
sentence of each image by teacher forcing; rank 0 then measures dev perplexity and the CIDEr of greedy
captions on dev, keeps the best model, logs to MLflow and reports a checkpoint. At the end the beam
size is chosen on dev, the best model captions test once (BLEU, METEOR, ROUGE-L, CIDEr), example
captions with their images go to MLflow, and the model is registered as ``vsa-captioner``; the alias
``champion`` moves to it when it beats the champion's dev CIDEr on the same dev data.

The recipe (config, model, stream, steps, dev score, ending) is ``vsa_dist/recipes/mrnn.py``; the driver that runs
it, ``vsa_dist/training/run.py``.
"""

from __future__ import annotations

import functools
from typing import Any

from vsa_dist.recipes.mrnn import MRNNTask
from vsa_dist.stages import run_stage
from vsa_dist.training.run import run_recipe


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(MRNNTask.config, functools.partial(run_recipe, MRNNTask), argv, prog="vsa train-mrnn",
                            preset=MRNNTask.config.PRESET)
