"""Short single-process runs of the alignment model, for choosing learning rates on dev (no Ray, no MLflow).

    python scripts/tune_align.py --optimizer sgd --lr 1e-4 --epochs 1
    python scripts/tune_align.py --optimizer adam --lr 2e-4 --score-norm mean --dropout 0.1 --epochs 2
    python scripts/tune_align.py --optimizer sgd --lr 1e-5 --raw-features --epochs 3     # the collapse
    python scripts/tune_align.py --optimizer adam --lr 2e-4 --score-norm mean --dropout 0.1 --hardest-negative \
        --warmup-epochs 1 --epochs 4
    python scripts/tune_align.py --optimizer adam --lr 2e-4 --weight-decay 0 --score-norm mean --dropout 0.1 \
        --batch 100 --epochs 2 --gru --cosine --margin 0.2  # variants outside the model: --gru, --cosine, --global-only
    python scripts/tune_align.py --features runs/flickr8k/features-lite2 --optimizer adam --lr 6e-4 --weight-decay 0 \
        --score-norm mean --dropout 0.1 --batch 100 --epochs 3 --global-only   # compare backbones' feature folders

Trains on the train split of a feature folder in memory (batches of 50 pairs by default, like one of two
DDP workers before negatives were gathered across them) and prints dev R@1+R@5+R@10 (both directions) after each epoch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from vsa_dist.data.pairs import load_split, word_index
from vsa_dist.eval.retrieval import evaluate_alignment, rsum
from vsa_dist.models.alignment import PAD, AlignmentArgs, AlignmentModel, one_sentence_each
from vsa_dist.training import epoch_lr, set_lr


class Variant(AlignmentModel):
    """Probes beyond the model's options: a GRU in place of the ReLU BRNN (directions summed, as h^f + h^b),
    region and word vectors at unit length (cosine scores, VSE-style), the whole-image row alone."""

    def __init__(self, args: AlignmentArgs, gru: bool, cosine: bool, global_only: bool):
        super().__init__(args)
        self.gru = torch.nn.GRU(args.word_dim, args.embed_dim, batch_first=True, bidirectional=True) if gru else None
        self.cosine, self.global_only = cosine, global_only

    def embed_regions(self, features: torch.Tensor) -> torch.Tensor:
        v = super().embed_regions(features)
        v = v[:, :1] if self.global_only else v
        return F.normalize(v, dim=-1) if self.cosine else v

    def embed_words(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.gru is None:
            s, mask = super().embed_words(tokens)
        else:
            mask = (tokens != PAD).float()
            packed = torch.nn.utils.rnn.pack_padded_sequence(self.dropout(self.word_vectors(tokens)),
                                                             mask.sum(1).clamp(min=1).long(), batch_first=True,
                                                             enforce_sorted=False)
            out, _ = torch.nn.utils.rnn.pad_packed_sequence(self.gru(packed)[0], batch_first=True,
                                                            total_length=tokens.shape[1])
            forward, backward = out.chunk(2, dim=-1)
            s = F.relu(self.word_out(self.dropout(forward + backward))) * mask[..., None]
        return (F.normalize(s, dim=-1) * mask[..., None] if self.cosine else s), mask


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="runs/flickr8k/features")
    p.add_argument("--batch", type=int, default=50, help="pairs per step")
    p.add_argument("--optimizer", choices=("sgd", "adam"), default="sgd")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--score-norm", choices=("sum", "mean"), default="sum")
    p.add_argument("--hardest-negative", action="store_true")
    p.add_argument(
        "--warmup-epochs",
        type=int,
        default=0,
        help="with --hardest-negative: all negatives for this many epochs first (VSE++)",
    )
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--raw-features", action="store_true", help="do not L2-normalise the CNN features")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--gru", action="store_true", help="a bidirectional GRU in place of the ReLU BRNN")
    p.add_argument("--cosine", action="store_true", help="unit-length region and word vectors (use a margin ~0.2)")
    p.add_argument("--global-only", action="store_true", help="the whole-image row alone, no regions")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--embed-dim", type=int, default=1000, help="multimodal space h")
    p.add_argument(
        "--lr-schedule", choices=("constant", "cosine"), default="constant", help="cosine: decay to 0 over --epochs"
    )
    p.add_argument("--clip-norm", type=float, default=0.0, help="also clip the gradient's global norm (0: off)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vocab = json.load(open(f"{args.features}/manifest.json"))["vocab"]["words"]
    index = word_index(vocab)
    train, dev = (load_split(args.features, s, index, 32) for s in ("train", "dev"))
    features, tokens = torch.from_numpy(train["features"]), torch.from_numpy(train["tokens"]).long()
    torch.manual_seed(0)
    model = Variant(
        AlignmentArgs(
            len(vocab) + 2,
            features.shape[-1],
            args.embed_dim,
            300,
            args.dropout,
            args.score_norm,
            False,
            args.margin,
            l2_features=not args.raw_features,
        ),
        args.gru,
        args.cosine,
        args.global_only,
    )
    opt = (
        torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
        if args.optimizer == "sgd"
        else torch.optim.Adam(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    )
    for epoch in range(1, args.epochs + 1):
        model.args.hardest_negative = args.hardest_negative and epoch > args.warmup_epochs
        model.train()
        set_lr(opt, epoch_lr(args.lr, args.lr_schedule, epoch, args.epochs))
        order, start, total, steps = torch.randperm(len(features)), time.time(), 0.0, 0
        for i in range(0, len(features) - args.batch + 1, args.batch):
            b = order[i:i + args.batch]
            loss = model(features[b], one_sentence_each(tokens[b]))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 5)
            if args.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_norm)
            opt.step()
            total, steps = total + loss.item(), steps + 1
        metrics = evaluate_alignment(model, torch.from_numpy(dev["features"]), torch.from_numpy(dev["tokens"]).long())
        print(f"epoch {epoch}: loss {total / steps:.1f}, {time.time() - start:.0f} s, dev rsum {rsum(metrics):.1f} "
              f"(R@1 {metrics['annotation']['r1']:.1f} / {metrics['search']['r1']:.1f})", flush=True)


if __name__ == "__main__":
    main()
