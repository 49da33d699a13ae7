"""Generator training steps: the padded teacher-forcing forward against the packed one (words only), in one process.

    python benchmarks/mrnn_step.py --features runs/flickr8k/features --steps 30

The same train batches (20 images x 5 sentences, the stage's batch of 100), the attending LSTM of
``train_mrnn_attention`` (hidden 512, dropout 0.5), Adam: forward, backward and step, timed per step, the two ways
alternating batch by batch so that machine noise falls on both. Two threads, no Ray; the stage's epoch adds the
dev evaluation and the data pipeline to these steps. Also: how many of the padded forward's N x T positions are words.
Writes WORK/mrnn_step.json (default runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist import config as cfglib  # noqa: E402
from vsa_dist.data.pairs import word_index  # noqa: E402
from vsa_dist.data.splits import load_split  # noqa: E402
from vsa_dist.features.format import load_features_manifest  # noqa: E402
from vsa_dist.models.losses import token_nll  # noqa: E402
from vsa_dist.models.mrnn import MRNN, PAD, sentence_rows, teacher_forcing  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402
from vsa_dist.recipes.mrnn import MRNNConfig, model_args  # noqa: E402

IMAGES_PER_STEP = 20


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--features", default="runs/flickr8k/features")
    parser.add_argument("--steps", type=int, default=30, help="timed steps each way (after 3 warm-up steps each)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", default=str(runs_root() / "bench"))
    cfg = parser.parse_args(argv)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(0)
    vocab = load_features_manifest(cfg.features)["vocab"]["words"]
    train = load_split(cfg.features, "train", word_index(vocab), 20, False)
    features, tokens = torch.from_numpy(train["features"]).float(), torch.from_numpy(train["tokens"]).long()
    # the model the stage builds from the preset, so the two cannot drift apart
    preset = cfglib.resolve(MRNNConfig, "train_mrnn_attention", {"features": cfg.features}, validate=False)
    model = MRNN(model_args(preset, len(vocab), features.shape[-1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    order = torch.randperm(len(features))
    seconds: dict[str, list[float]] = {"padded": [], "packed": []}
    words = positions = 0
    for step in range(cfg.steps + 3):
        images = order[step * IMAGES_PER_STEP:(step + 1) * IMAGES_PER_STEP]
        image_of, sentences = sentence_rows(tokens[images])
        inputs, targets = teacher_forcing(sentences, model.args.end)
        words, positions = words + int((targets != PAD).sum()), positions + targets.numel()
        for way in ("padded", "packed"):
            start = time.perf_counter()
            if way == "padded":
                loss, count = token_nll(model(features[images], inputs, image_of=image_of), targets)
            else:
                loss, count = token_nll(*model(features[images], inputs, image_of=image_of, targets=targets))
            optimizer.zero_grad()
            (loss / count).backward()
            optimizer.step()
            if step >= 3:
                seconds[way].append(time.perf_counter() - start)
    result = {
        "command": "python benchmarks/mrnn_step.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "features": cfg.features, "steps": cfg.steps, "threads": cfg.threads,
        "word_share_of_padded_positions": round(words / positions, 3),
        **{f"{way}_s_per_step": round(statistics.median(s), 4) for way, s in seconds.items()},
    }
    result["speedup"] = round(result["padded_s_per_step"] / result["packed_s_per_step"], 2)
    out = Path(cfg.work) / "mrnn_step.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
