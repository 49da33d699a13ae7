"""Probe one alignment lever fast: the alignment model trained in one process (no Ray, no DDP, no MLflow) on the
frozen features of a feature folder, dev scored after every pass, the best-on-dev model tested once.

    python benchmarks/probe_levers.py --features runs/flickr8k/features --whole-only --passes 4   # VSE++ reference
    python benchmarks/probe_levers.py --features runs/flickr8k/features-lite2 --whole-only --passes 4
    python benchmarks/probe_levers.py --features runs/flickr8k/features --whole-only --grouped --batch 32 --passes 4
    python benchmarks/probe_levers.py --features runs/flickr8k/features --pool gpo --passes 4   # GPO over 20 rows

A pass covers every (image, sentence) pair of the train split once, in a random order (``--grouped``: each image
with all its sentences in one step, ``--batch`` images a step). The model is ``AlignmentModel`` with the
``train_align_modern`` preset's model (GRU, cosine, the global term), built from the preset itself, Adam, gradient norm
clipped at 2 (the issue's VSE++ reference); ``--local W`` weighs the region-word term (0: the whole image alone). The
docs' figures of this probe were measured when it restated the preset by hand (margin 0.2, dropout 0.1).
``--features A,B``: each image's feature rows
are the folders' unit-length features side by side (a stronger image side from several CNNs). Each pass prints a
line; the last line is a JSON summary. For choosing what to build: the numbers a user sees come from ``vsa
train-align``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsa_dist import config as cfglib  # noqa: E402
from vsa_dist.data.pairs import word_index  # noqa: E402
from vsa_dist.data.splits import load_split  # noqa: E402
from vsa_dist.eval.retrieval import evaluate_alignment, rsum  # noqa: E402
from vsa_dist.models.alignment import AlignmentModel  # noqa: E402
from vsa_dist.models.tokens import PAD  # noqa: E402
from vsa_dist.recipes.align import AlignConfig, model_args  # noqa: E402


def split_arrays(folders: list[str], split: str, index: dict[str, int], whole_only: bool):
    """One split's features (the folders' side by side, each at unit length) and sentences [N, 5, 32]."""
    loaded = [load_split(folder, split, index, 32) for folder in folders]
    if any(d["image_ids"] != loaded[0]["image_ids"] for d in loaded):
        raise SystemExit(f"{folders}: the folders hold the {split} images in different orders")
    features = [torch.from_numpy(d["features"]).float() for d in loaded]
    features = features[0] if len(features) == 1 else torch.cat([F.normalize(f, dim=-1) for f in features], dim=-1)
    return (features[:, :1] if whole_only else features), torch.from_numpy(loaded[0]["tokens"]).long()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", required=True, help="a feature folder, or several joined by commas")
    parser.add_argument("--passes", type=int, default=6)
    parser.add_argument("--hardest-after", type=int, default=2, help="hardest negatives after this pass (0: never)")
    parser.add_argument("--grouped", action="store_true", help="each image with all its sentences in one step")
    parser.add_argument("--whole-only", action="store_true", help="the whole-image row only (no regions)")
    parser.add_argument("--local", type=float, default=0.0, help="weight of the region-word term")
    parser.add_argument("--pool", choices=("mean", "gpo"), default="mean",
                        help="the global term's vectors: v_0 and the mean s_t, or GPO over all the rows and the words")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=128, help="pairs a step (--grouped: images a step)")
    parser.add_argument("--clip-value", type=float, default=0.0,
                        help="clip each gradient element at this (as vsa train-align does) instead of the norm at 2")
    parser.add_argument("--cosine-lr", action="store_true", help="decay the rate to 0 over the passes (cosine)")
    parser.add_argument("--one-per-image", action="store_true",
                        help="each image once a pass with one of its sentences drawn at random (as vsa train-align "
                             "does; a pass is then 6,000 pairs on Flickr8k, not 30,000)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the summary JSON here")
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    folders = args.features.split(",")
    vocab = json.loads((Path(folders[0]) / "manifest.json").read_text())["vocab"]["words"]
    index = word_index(vocab)
    train_features, train_tokens = split_arrays(folders, "train", index, args.whole_only)
    dev_features, dev_tokens = split_arrays(folders, "dev", index, args.whole_only)
    preset = cfglib.resolve(AlignConfig, "train_align_modern",
                            {"local_weight": args.local, "global_pooling": args.pool}, validate=False)
    model = AlignmentModel(model_args(preset, len(vocab) + 2, train_features.shape[-1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    pairs = (train_tokens != PAD).any(-1).nonzero()                     # [P, 2]: image, sentence slot
    started, best, curve = time.time(), None, []
    for step_pass in range(1, args.passes + 1):
        model.train()
        model.use_hardest = bool(args.hardest_after) and step_pass > args.hardest_after
        if args.cosine_lr:
            for group in optimizer.param_groups:
                group["lr"] = args.lr * 0.5 * (1 + math.cos(math.pi * (step_pass - 1) / args.passes))
        if args.one_per_image:
            order = torch.randperm(len(train_features))
            slot = torch.multinomial((train_tokens[order] != PAD).any(dim=-1).float(), 1).squeeze(1)
            order = torch.stack([order, slot], dim=1)                 # as one_sentence_each draws
        else:
            order = torch.randperm(len(train_features)) if args.grouped else pairs[torch.randperm(len(pairs))]
        losses = []
        for start in range(0, len(order) - args.batch + 1, args.batch):
            rows = order[start:start + args.batch]
            if args.grouped:
                loss = model(train_features[rows], train_tokens[rows])
            else:
                loss = model(train_features[rows[:, 0]], train_tokens[rows[:, 0], rows[:, 1]])
            optimizer.zero_grad()
            loss.backward()
            if args.clip_value:
                torch.nn.utils.clip_grad_value_(model.parameters(), args.clip_value)
            else:
                torch.nn.utils.clip_grad_norm_(model.parameters(), 2.0)
            optimizer.step()
            losses.append(loss.item())
        model.eval()
        with torch.no_grad():
            dev = evaluate_alignment(model, dev_features, dev_tokens)
        point = {"pass": step_pass, "minutes": round((time.time() - started) / 60, 2), "dev_rsum": round(rsum(dev), 1),
                 "dev_r1": [dev["annotation"]["r1"], dev["search"]["r1"]], "loss": round(sum(losses) / len(losses), 2)}
        curve.append(point)
        print(json.dumps(point), flush=True)
        if best is None or point["dev_rsum"] > best[0]:
            best = (point["dev_rsum"], step_pass, {k: v.clone() for k, v in model.state_dict().items()})
    model.load_state_dict(best[2])
    test_features, test_tokens = split_arrays(folders, "test", index, args.whole_only)
    with torch.no_grad():
        test = evaluate_alignment(model, test_features, test_tokens)
    summary = {"probe": vars(args), "best_dev_pass": best[1], "best_dev_rsum": best[0], "test": test, "curve": curve}
    print(json.dumps(summary), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
