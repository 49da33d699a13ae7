"""Short single-process runs of the generator, for choosing its settings on dev (no Ray, no MLflow).

    python scripts/tune_mrnn.py --cell lstm --feature-norm rms --images 2000 --epochs 2
    python scripts/tune_mrnn.py --cell rnn --feature-norm unit --images 2000 --epochs 2
    python scripts/tune_mrnn.py --cell lstm --attention --images 2000 --epochs 2

Trains on the first IMAGES train images of a feature folder in memory (batches of 20 images = 100
image-sentence pairs, Adam for lstm, RMSprop for rnn, lr 1e-3, dropout 0.5 unless set, one thread) and prints the
perplexity of the first DEV_IMAGES dev images' sentences after each epoch.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vsa_dist.data.pairs import load_split, word_index
from vsa_dist.eval.captions import perplexity
from vsa_dist.models.mrnn import MRNN, MRNNArgs, sentence_rows, teacher_forcing, token_nll


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--features", default="runs/flickr8k/features")
    p.add_argument("--cell", choices=("rnn", "lstm"), default="rnn")
    p.add_argument("--feature-norm", choices=("unit", "rms"), default="rms")
    p.add_argument("--attention", action="store_true", help="lstm attending over the whole image and its regions")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--images", type=int, default=2000)
    p.add_argument("--dev-images", type=int, default=300)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    vocab = json.load(open(f"{args.features}/manifest.json"))["vocab"]["words"]
    index = word_index(vocab)
    train, dev = (
        load_split(args.features, s, index, 20, whole_image_only=not args.attention) for s in ("train", "dev")
    )
    features = torch.from_numpy(train["features"]).float()[:args.images]
    tokens = torch.from_numpy(train["tokens"]).long()[:args.images]
    dev_features = torch.from_numpy(dev["features"]).float()[:args.dev_images]
    dev_tokens = torch.from_numpy(dev["tokens"]).long()[:args.dev_images]
    torch.manual_seed(0)
    model = MRNN(MRNNArgs(vocab_size=len(vocab) + 3, feature_dim=features.shape[-1], cell=args.cell,
                          feature_norm=args.feature_norm, attention=args.attention, dropout=args.dropout))
    optimizer = (torch.optim.Adam if args.cell == "lstm" else torch.optim.RMSprop)(model.parameters(), lr=args.lr)
    start = time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        order = torch.randperm(len(features))
        for i in range(0, len(features), 20):
            batch = order[i:i + 20]
            image_of, sentences = sentence_rows(tokens[batch])
            inputs, targets = teacher_forcing(sentences, model.args.end)
            nll, count = token_nll(model(features[batch], inputs, image_of=image_of), targets)
            optimizer.zero_grad()
            (nll / count).backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), 5)
            optimizer.step()
        print(
            f"{args.cell}{' attention' if args.attention else ''} {args.feature_norm} dropout {args.dropout} "
            f"epoch {epoch}: dev perplexity "
            f"{perplexity(model, dev_features, dev_tokens):.2f}, {time.time() - start:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()
