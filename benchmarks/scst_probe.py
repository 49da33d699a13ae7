"""Self-critical probe, in one process: how far a generator's samples are from its greedy caption, and how fast
self-critical steps raise dev CIDEr-D at each sampling temperature.

    python benchmarks/scst_probe.py --init runs/flickr8k-quick/mrnn/best.pt --features runs/flickr8k-quick/features \
        --temperature 1.0 --temperature 0.5 --lr 5e-5 --steps 300 --every 50

First, on the first 200 train images: the mean CIDEr-D of the greedy caption and of 5 samples per image at
temperatures 1, 0.7, 0.5 and 0.3 and the probed ones (dropout off, as the model decodes), and how many samples are
distinct. Then (unless ``--steps 0``), for each temperature, from the same start: ``--steps``
steps of ``self_critical_loss`` (the stage's objective: 20 train images x 5 samples, Adam, element-wise clipping at
5, dropout ``--dropout``), and every ``--every`` steps the CIDEr-D of greedy captions for the first 500 dev images.
The reward is the stage's (document frequencies of the train references) and so is the dev score here, so it is
close to, not equal to, pycocoevalcap's dev CIDEr that the stage logs. Two threads, no Ray: a fast way to compare
settings before a full ``vsa train-mrnn --objective scst`` run, not a replacement for one. Writes WORK/scst.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist.checkpoints import load_generator  # noqa: E402
from vsa_dist.data.pairs import word_index  # noqa: E402
from vsa_dist.data.splits import load_split, split_sentence_ids  # noqa: E402
from vsa_dist.eval.cider import CiderD  # noqa: E402
from vsa_dist.features.format import load_features_manifest  # noqa: E402
from vsa_dist.models.decoding import caption_ids, greedy, sample  # noqa: E402
from vsa_dist.models.losses import reward_references, self_critical_loss  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402

IMAGES_PER_STEP, SAMPLES, MAX_LEN, CLIP = 20, 5, 20, 5.0
SPREAD_TEMPERATURES = (1.0, 0.7, 0.5, 0.3)


def load_model(path: str, dropout: float) -> torch.nn.Module:
    model = load_generator(path)[0]
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = dropout
    return model


def mean_cider(reward: CiderD, ids: torch.Tensor, references: list, per_image: int, end: int) -> float:
    captions = caption_ids(ids, end)
    return sum(reward.score(c, references[i // per_image]) for i, c in enumerate(captions)) / len(captions)


def train_curve(cfg: argparse.Namespace, t: float, reward: CiderD, train_features: torch.Tensor,
                train_tokens: torch.Tensor, dev_features: torch.Tensor, dev_references: list) -> list[dict]:
    """``cfg.steps`` self-critical steps at temperature ``t`` from ``cfg.init``; greedy dev CIDEr-D every
    ``cfg.every`` steps."""
    torch.manual_seed(0)
    model = load_model(cfg.init, cfg.dropout)
    end = model.args.end
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    order = torch.randperm(len(train_features))
    began, rewards = time.time(), []

    def dev_point(step: int) -> dict:
        model.eval()
        decoded = greedy(model, dev_features, MAX_LEN)
        model.train()
        point = {"step": step, "dev_cider_d": mean_cider(reward, decoded, dev_references, 1, end),
                 "dev_distinct": len({tuple(c) for c in caption_ids(decoded, end)}),
                 "sample_cider_d": sum(rewards[-cfg.every:]) / cfg.every if rewards else None,
                 "seconds": round(time.time() - began)}
        print(f"T {t:g} step {step}: dev CIDEr-D {point['dev_cider_d']:.3f}, {point['dev_distinct']} distinct"
              + (f", samples {point['sample_cider_d']:.3f}" if rewards else ""), flush=True)
        return point

    curve = [dev_point(0)]
    model.train()
    for step in range(1, cfg.steps + 1):
        first = (step * IMAGES_PER_STEP) % len(train_features)
        batch = order[first:first + IMAGES_PER_STEP]
        loss, logged = self_critical_loss(model, train_features[batch], train_tokens[batch], reward, SAMPLES,
                                          end, MAX_LEN, t)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), CLIP)
        optimizer.step()
        rewards.append(logged["reward"])
        if step % cfg.every == 0:
            curve.append(dev_point(step))
    return curve


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--init", required=True, help="a cross-entropy generator checkpoint (best.pt)")
    parser.add_argument("--features", required=True, help="its feature folder")
    parser.add_argument("--temperature", type=float, action="append", help="sampling temperatures (repeatable)")
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--work", default=str(runs_root() / "bench" / "scst-probe"))
    cfg = parser.parse_args(argv)
    temperatures = cfg.temperature or [1.0, 0.5]
    torch.set_num_threads(2)
    work = Path(cfg.work)
    work.mkdir(parents=True, exist_ok=True)

    index = word_index(load_features_manifest(cfg.features)["vocab"]["words"])
    reward = CiderD(split_sentence_ids(cfg.features, "train", index, MAX_LEN))
    splits = {s: load_split(cfg.features, s, index, MAX_LEN, False) for s in ("train", "dev")}
    train_features = torch.from_numpy(splits["train"]["features"]).float()
    train_tokens = torch.from_numpy(splits["train"]["tokens"]).long()
    dev_features = torch.from_numpy(splits["dev"]["features"][:500]).float()
    model = load_model(cfg.init, cfg.dropout)
    end = model.args.end
    dev_references = reward_references(reward, torch.from_numpy(splits["dev"]["tokens"][:500]).long(), end)

    # how far the samples are from the greedy caption, before any step
    torch.manual_seed(0)
    model.eval()
    start_features, start_references = train_features[:200], reward_references(reward, train_tokens[:200], end)
    with torch.no_grad():
        spread = {"greedy": mean_cider(reward, greedy(model, start_features, MAX_LEN), start_references, 1, end)}
        for t in sorted({*SPREAD_TEMPERATURES, *temperatures}, reverse=True):
            ids = sample(model, start_features.repeat_interleave(SAMPLES, dim=0), MAX_LEN, t)[0]
            spread[f"samples_t{t:g}"] = mean_cider(reward, ids, start_references, SAMPLES, end)
            spread[f"distinct_t{t:g}"] = len({tuple(c) for c in caption_ids(ids, end)})
    print("train CIDEr-D (first 200 images):", ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}"
                                                         for k, v in spread.items()), flush=True)

    curves = {f"{t:g}": train_curve(cfg, t, reward, train_features, train_tokens, dev_features, dev_references)
              for t in (temperatures if cfg.steps else [])}
    result = {"init": cfg.init, "features": cfg.features, "lr": cfg.lr, "dropout": cfg.dropout, "steps": cfg.steps,
              "images_per_step": IMAGES_PER_STEP, "samples": SAMPLES, "train_spread": spread, "curves": curves}
    (work / "scst.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
