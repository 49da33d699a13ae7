"""Alignment training: pairs/s with 1 and 2 workers, time waiting for data, memory mini vs full, eval cost.

    python benchmarks/train.py            # needs runs/flickr8k/features and runs/mini/features (vsa features)
    python benchmarks/train.py --eval-only   # only the full test split's retrieval evaluation, both ways of ranking
    python benchmarks/train.py --read-ahead-epochs 3   # data wait from epoch 2 on, --read-ahead false vs true

One epoch per configuration, each in a fresh process with its own local Ray, in one run (compare the
ratios). Writes WORK/train.json (default runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_stage  # noqa: E402
from vsa_dist.data.pairs import word_index  # noqa: E402
from vsa_dist.data.splits import load_split  # noqa: E402
from vsa_dist.eval.retrieval import encode_split, evaluate_alignment, retrieval_metrics  # noqa: E402
from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402


def one_epoch(features: Path, out: Path, workers: int) -> dict:
    memory = run_stage(
        [
            "train-align",
            "--features",
            str(features),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--workers",
            str(workers),
            "--test",
            "false",
            "--register-as",
            "",
            "--experiment",
            "bench-train",
            "--progress",
            "false",
        ],
        out.parent / f"{out.name}.log",
    )
    last = json.loads((out / "summary.json").read_text())["last_epoch"]
    row = {"workers": workers, "features": str(features), "pairs_per_s": round(last["pairs_per_s"], 1),
           "data_wait_share": round(last["data_wait_share"], 3), **memory}
    print(f"  {row}", flush=True)
    return row


def read_ahead_epochs(features: Path, work: Path, epochs: int, settings: list[str]) -> dict:
    """The modern preset for a few epochs with each ``--read-ahead`` setting, 2 workers: every epoch's share of
    time waiting for data, its wait for the first batch, and its wall time from one report to the next (steps, dev
    evaluation and checkpoint: on a machine where the read competes for the cores, only a shorter epoch is a gain)."""
    import mlflow

    from vsa_dist.tracking import tracking_uri

    client = mlflow.MlflowClient(tracking_uri())
    result = {}
    for index, setting in enumerate(settings):
        out = work / f"read-ahead-{setting}-{index}"
        run_stage(["train-align", "--features", str(features), "--out", str(out), "--preset", "train_align_brnn_mean",
                   "--epochs", str(epochs), "--read-ahead", setting, "--test", "false", "--register-as", "",
                   "--experiment", "bench-train", "--progress", "false"], out.parent / f"{out.name}.log")
        run_id = json.loads((out / "summary.json").read_text())["run_id"]
        history = {key: client.get_metric_history(run_id, key)
                   for key in ("data_wait_share", "first_batch_wait_s", "pairs_per_s")}
        logged_at = [m.timestamp / 1000 for m in history["data_wait_share"]]
        epochs_seen = [{"epoch": m.step, **{key: round(next(h.value for h in history[key] if h.step == m.step), 3)
                                             for key in history}} for m in history["data_wait_share"]]
        for row, before, after in zip(epochs_seen[1:], logged_at, logged_at[1:]):
            row["epoch_wall_s"] = round(after - before, 1)
        later = epochs_seen[1:]
        result[f"{setting} ({index})"] = {
            "run_id": run_id, "epochs": epochs_seen,
            "mean_data_wait_share_after_epoch_1": round(sum(r["data_wait_share"] for r in later) / len(later), 4),
            "mean_epoch_wall_s_after_epoch_1": round(sum(r["epoch_wall_s"] for r in later) / len(later), 1)}
        print(f"  --read-ahead {setting}: {json.dumps(result[f'{setting} ({index})'])}", flush=True)
    return result


def eval_cost(features: Path) -> dict:
    vocab = json.loads((features / "manifest.json").read_text())["vocab"]["words"]
    test = load_split(features, "test", word_index(vocab), 32)
    model = AlignmentModel(AlignmentArgs(vocab_size=len(vocab) + 2, feature_dim=test["features"].shape[-1])).eval()
    features, tokens = torch.from_numpy(test["features"]), torch.from_numpy(test["tokens"]).long()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.time()
    metrics = evaluate_alignment(model, features, tokens)
    seconds = time.time() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # The same ranks found the slower way evaluate_alignment is measured against: each sentence's own score looked
    # up in the blocks, a first pass over (nearly) the whole score matrix.
    start = time.time()
    encoded = encode_split(model, features, tokens)
    chunk = encoded["sentence_chunk"]  # the blocks asked for are whole sentence chunks of the encoding
    two_pass = retrieval_metrics(lambda il, sl: model.score(encoded["regions"][il], encoded["words"][sl.start // chunk],
                                                            encoded["masks"][sl.start // chunk]),
                                 len(features), encoded["image_of"], sentence_chunk=chunk)
    seconds_two_pass = time.time() - start
    assert two_pass == metrics, (two_pass, metrics)
    return {"images": len(test["features"]), "sentences": int((test["tokens"] != 0).any(-1).sum()),
            "seconds": round(seconds, 1), "seconds_positives_from_blocks": round(seconds_two_pass, 1),
            "speedup": round(seconds_two_pass / seconds, 2),
            "peak_rss_mib": round(peak / 1024), "rss_before_mib": round(before / 1024)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--full", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--mini", default=str(runs_root() / "mini" / "features"))
    parser.add_argument("--work", default=str(runs_root() / "bench" / "train"))
    parser.add_argument(
        "--eval-only", action="store_true", help="only the retrieval evaluation's cost (a minute or two)"
    )
    parser.add_argument("--read-ahead-epochs", type=int, default=0,
                        help="only the data wait: this many epochs (at least 2) per --read-ahead setting")
    parser.add_argument("--read-ahead-settings", default="false,true", help="the --read-ahead settings, in turn")
    args = parser.parse_args(argv)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    full, mini = Path(args.full), Path(args.mini)
    if args.eval_only:
        evaluation = eval_cost(full)
        print(json.dumps(evaluation))
        (work / "eval.json").write_text(json.dumps(evaluation, indent=1))
        return {"eval": evaluation}
    if args.read_ahead_epochs:
        if args.read_ahead_epochs < 2:
            raise SystemExit(
                "--read-ahead-epochs: at least 2 (the first epoch's cold start is not what read-ahead hides)"
            )
        waits = read_ahead_epochs(full, work, args.read_ahead_epochs, args.read_ahead_settings.split(","))
        (work / "read_ahead.json").write_text(json.dumps(waits, indent=1))
        return {"read_ahead": waits}
    print("one epoch each:", flush=True)
    rows = [
        one_epoch(full, work / "full-w1", 1),
        one_epoch(full, work / "full-w2", 2),
        one_epoch(mini, work / "mini-w2", 2),
    ]
    print("retrieval evaluation, full Flickr8k test, untrained model:", flush=True)
    evaluation = eval_cost(full)
    print(f"  {evaluation}", flush=True)
    result = {"epochs": rows, "eval": evaluation, "ratios": {
        "pairs_per_s_2_vs_1_workers": round(rows[1]["pairs_per_s"] / rows[0]["pairs_per_s"], 2),
        "peak_pss_full_vs_mini": round(rows[1]["peak_tree_pss_mib"] / rows[2]["peak_tree_pss_mib"], 2)}}
    (work / "train.json").write_text(json.dumps(result, indent=1))
    print(json.dumps(result["ratios"]))
    return result


if __name__ == "__main__":
    main()
