"""Probe the image-side lever: EfficientNet-lite0's last blocks fine-tuned with the alignment model, on a CPU.

    python benchmarks/probe_cnn_finetune.py --shards runs/flickr8k/shards --features runs/flickr8k/features \
        --passes 4                     # blocks 15 and the head trained, 12-14 frozen
    python benchmarks/probe_cnn_finetune.py ... --passes 4 --frozen   # the same loop, the CNN frozen: the reference

Fine-tuning runs the CNN's last blocks forward and backward in every step. Rerunning the frozen first blocks
every pass would cost a CNN pass over the train images each time, so they run once: the input of block
``--cache-from`` (7×7×192 for lite0 at 224 px) of every image (and of its mirror image, for the train split: the
one augmentation a cache can hold) is kept in WORK/trunk{N}_{split}.npz, from the image shards (our own shard
format; the cache is our own npz, loaded without pickle). Blocks ``--cache-from`` … ``--tune-from - 1`` stay frozen;
blocks ``--tune-from`` … and the head conv are trained (BatchNorm statistics stay the pretrained ones) at
``--cnn-lr`` beside the alignment model (the ``train_align_modern`` preset's model, built from it, on the whole image:
GRU, cosine, global term; Adam, hardest negatives after ``--hardest-after`` passes; the docs' figures were measured
when it restated the preset by hand, margin 0.2 and dropout 0.1). Each image brings all its sentences to a
step (``--batch`` images a step), so one CNN pass serves five pairs. Prints one line a pass (dev rsum, minutes,
CNN seconds) and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vsa_dist import config as cfglib  # noqa: E402
from vsa_dist.data.pairs import word_index  # noqa: E402
from vsa_dist.data.shards import read_samples, shard_paths  # noqa: E402
from vsa_dist.data.splits import load_split  # noqa: E402
from vsa_dist.eval.retrieval import evaluate_alignment, rsum  # noqa: E402
from vsa_dist.features.extract import decode_rgb  # noqa: E402
from vsa_dist.models.alignment import AlignmentModel  # noqa: E402
from vsa_dist.models.backbone import load_backbone  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402
from vsa_dist.recipes.align import AlignConfig, model_args  # noqa: E402


def cache_trunk(backbone, shards: str, split: str, upto: int, path: Path) -> None:
    """Every image's activation entering block ``upto`` (float16), keyed by image id; the train split also mirrored."""
    net, size = backbone.trunk.net, backbone.spec.input_size
    ids, maps, mirrors, pending = [], [], [], []

    def run(batch: torch.Tensor) -> torch.Tensor:
        x = net._swish(net._bn0(net._conv_stem(backbone.normalize(batch))))
        for block in net._blocks[:upto]:
            x = block(x)
        return x.half()

    def flush() -> None:
        batch = torch.stack(pending)
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            maps.append(run(batch).numpy())
            if split == "train":
                mirrors.append(run(batch.flip(-1)).numpy())
        pending.clear()

    for sample in read_samples(shard_paths(shards, [split])):
        image = torch.from_numpy(decode_rgb(sample.get("jpg"))).permute(2, 0, 1).float()
        if image.shape[1:] != (size, size):
            image = F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True)[0]
        pending.append(image)
        ids.append(json.loads(sample["json"])["image_id"])
        if len(pending) == 32:
            flush()
    if pending:
        flush()
    arrays = {"ids": np.array(ids), "maps": np.concatenate(maps)}
    if mirrors:
        arrays["mirrors"] = np.concatenate(mirrors)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="image shards (vsa shards build --out)")
    parser.add_argument("--features", required=True, help="their feature folder: the vocabulary and the sentences")
    parser.add_argument("--work", default=str(runs_root() / "bench" / "cnn-finetune"))
    parser.add_argument("--cache-from", type=int, default=12, help="cache the input of this block")
    parser.add_argument("--tune-from", type=int, default=15, help="train this block and the ones after it")
    parser.add_argument("--passes", type=int, default=4)
    parser.add_argument("--hardest-after", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="images a step, each with all its sentences")
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--cnn-lr", type=float, default=2e-5)
    parser.add_argument("--frozen", action="store_true", help="train nothing of the CNN (the reference)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    backbone = load_backbone("efficientnet-lite0").eval()
    net = backbone.trunk.net
    vocab = json.loads((Path(args.features) / "manifest.json").read_text())["vocab"]["words"]
    index = word_index(vocab)

    def split_arrays(split: str):
        path = work / f"trunk{args.cache_from}_{split}.npz"
        if not path.exists():
            started = time.time()
            cache_trunk(backbone, args.shards, split, args.cache_from, path)
            print(f"cached {split} in {time.time() - started:.0f} s", flush=True)
        sentences = load_split(args.features, split, index, 32)
        cache = np.load(path, allow_pickle=False)
        where = {str(i): k for k, i in enumerate(cache["ids"])}
        order = [where[str(i)] for i in sentences["image_ids"]]
        mirrors = torch.from_numpy(cache["mirrors"][order]) if "mirrors" in cache.files else None
        return torch.from_numpy(cache["maps"][order]), mirrors, torch.from_numpy(sentences["tokens"]).long()

    maps, mirrors, tokens = split_arrays("train")
    dev_maps, _, dev_tokens = split_arrays("dev")
    frozen = torch.nn.ModuleList(net._blocks[args.cache_from:args.tune_from]).requires_grad_(False)
    tuned = torch.nn.ModuleList([*net._blocks[args.tune_from:], net._conv_head, net._bn1])
    cnn_params = [] if args.frozen else list(tuned.parameters())
    tuned.requires_grad_(not args.frozen)

    def image_features(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            with torch.no_grad():
                x = batch.float()
                for block in frozen:
                    x = block(x)
            for block in net._blocks[args.tune_from:]:
                x = block(x)
            x = net._swish(net._bn1(net._conv_head(x)))
        return x.float().mean(dim=(2, 3))[:, None]                     # [B, 1, 1280]: the whole-image row

    # the modern preset's model scoring the whole image alone (the blocks above it train on that row)
    preset = cfglib.resolve(AlignConfig, "train_align_modern", {"local_weight": 0.0}, validate=False)
    model = AlignmentModel(model_args(preset, len(vocab) + 2, net._fc.in_features))
    groups = [{"params": list(model.parameters()), "lr": args.lr}]
    optimizer = torch.optim.Adam(groups + ([{"params": cnn_params, "lr": args.cnn_lr}] if cnn_params else []))
    started, curve = time.time(), []
    for step_pass in range(1, args.passes + 1):
        model.train()
        frozen.eval()
        tuned.eval()                                                    # BatchNorm keeps the pretrained statistics
        model.use_hardest = bool(args.hardest_after) and step_pass > args.hardest_after
        order, cnn_seconds = torch.randperm(len(maps)), 0.0
        for start in range(0, len(order) - args.batch + 1, args.batch):
            rows = order[start:start + args.batch]
            batch = maps[rows]
            if mirrors is not None:
                batch = torch.where((torch.rand(len(rows)) < 0.5)[:, None, None, None], mirrors[rows], batch)
            cnn_started = time.time()
            features = image_features(batch)
            cnn_seconds += time.time() - cnn_started
            loss = model(features, tokens[rows])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(list(model.parameters()) + cnn_params, 2.0)
            optimizer.step()
        model.eval()
        with torch.no_grad():
            dev_features = torch.cat([image_features(dev_maps[i:i + 200]) for i in range(0, len(dev_maps), 200)])
            dev = evaluate_alignment(model, dev_features, dev_tokens)
        point = {"pass": step_pass, "minutes": round((time.time() - started) / 60, 2), "dev_rsum": round(rsum(dev), 1),
                 "dev_r1": [dev["annotation"]["r1"], dev["search"]["r1"]],
                 "cnn_forward_s": round(cnn_seconds, 1)}
        curve.append(point)
        print(json.dumps(point), flush=True)
    summary = {"probe": vars(args), "best_dev_rsum": max(p["dev_rsum"] for p in curve), "curve": curve}
    print(json.dumps(summary), flush=True)
    (work / ("frozen.json" if args.frozen else "tuned.json")).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
