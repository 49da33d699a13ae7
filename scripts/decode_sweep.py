"""Caption metrics of one generator checkpoint on a split under several decodings (beam size, length penalty).

    python scripts/decode_sweep.py --checkpoint runs/flickr8k/mrnn-modern-rms/best.pt \
        --features runs/bench/flickr8k/features-roi --split dev --settings 3:0,5:0,7:0,3:0.5,5:0.5

One JSON line per setting. Choose on dev, never on test; `vsa train-mrnn` chooses the beam on dev CIDEr.
"""

from __future__ import annotations

import argparse
import json

import torch

from vsa_dist.checkpoints import load_generator
from vsa_dist.data.pairs import load_split, word_index
from vsa_dist.eval.captions import score_captions
from vsa_dist.models.mrnn import generate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--features", required=True)
    parser.add_argument("--split", default="dev")
    parser.add_argument("--settings", default="3:0,5:0,7:0,3:0.5,5:0.5", help="beam:length_penalty, comma-separated")
    args = parser.parse_args()
    model, state = load_generator(args.checkpoint)
    vocab = state["vocab"]
    split = load_split(args.features, args.split, word_index(vocab), state["config"]["max_words"],
                       not model.args.attention)
    features = torch.from_numpy(split["features"]).float()
    for setting in args.settings.split(","):
        beam, penalty = setting.split(":")
        captions = generate(model, features, vocab, int(beam), state["config"]["max_len"], float(penalty))
        metrics = score_captions(split, captions)
        length = sum(len(c.split()) for c in captions) / len(captions)
        print(json.dumps({"beam": int(beam), "length_penalty": float(penalty), "mean_words": round(length, 2),
                          **{k: round(v, 4) for k, v in metrics.items()}}), flush=True)


if __name__ == "__main__":
    main()
