"""Merge a finished run's test numbers into docs/results/flickr8k.json, with its command and MLflow run id.

    python scripts/record_results.py retrieval.paper runs/flickr8k/align-paper/summary.json \
        "vsa train-align --features runs/flickr8k/features --out runs/flickr8k/align-paper --epochs 12"
    python scripts/record_results.py captions.paper runs/flickr8k/mrnn-paper/summary.json "vsa train-mrnn …"
    python scripts/record_results.py captions.ensemble runs/flickr8k/ensemble-test.json \
        "vsa eval captions …" RUN_A,RUN_B
    python scripts/record_results.py retrieval.modern_ensemble runs/flickr8k/ensemble-align-test.json \
        "vsa eval retrieval …" RUN_A,RUN_B
    python scripts/record_results.py quick runs/flickr8k-quick/summary.json "vsa pipeline --preset pipeline_quick"

Retrieval runs (train-align) record annotation/search R@K and median rank; generator runs (train-mrnn) record
BLEU-1..4, METEOR, ROUGE-L, CIDEr, with the beam chosen on dev; a run that logged its minutes also records
``train_minutes`` and ``dev_curve`` (dev score against minutes; MLFLOW_TRACKING_URI names the store), and an alignment
run ``minutes_to_paper_row`` (when dev first beat the paper's row in all eight columns). An existing
entry's other keys (e.g. ``captions.modern`` under ``captions``) are kept. The output of ``vsa eval captions --out
FILE`` or ``vsa eval retrieval --out FILE`` (an ensemble of trained models) is recorded with the MLflow run ids of
its members, given as a fourth argument.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from vsa_dist.training.run import dev_curve  # the run's dev score by minute, from its MLflow run (set the URI)

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results" / "flickr8k.json"
DATA = "../shared/data/flickr8k: 6,000 train / 1,000 dev (selection) / 1,000 test images, 5 sentences each"
CAPTION_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")


def main(argv: list[str]) -> None:
    key, summary_path, command, *member_runs = argv
    summary = json.loads(Path(summary_path).read_text())
    if summary.get("kind") == "pipeline":
        return record_pipeline(key, summary, command)
    if "test" not in summary:  # vsa eval captions/retrieval --out: the numbers themselves, no training run of its own
        numbers = ({d: summary[d] for d in ("annotation", "search")} if "annotation" in summary
                   else {k: v for k, v in summary.items() if k in CAPTION_METRICS})
        summary = {"test": numbers, "beam": summary.get("beam"), "best_dev_epoch": None,
                   "run_id": member_runs[0].split(",") if member_runs else None}
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    node = results
    for part in key.split(".")[:-1]:
        node = node.setdefault(part, {})
    if "bleu1" in summary["test"]:
        numbers = {k: round(v, 4) for k, v in summary["test"].items()}
        numbers["beam"] = summary["beam"]
    else:
        numbers = {d: {k: round(v, 2) for k, v in summary["test"][d].items()} for d in ("annotation", "search")}
    entry = node.setdefault(key.split(".")[-1], {})
    # learning efficiency: minutes of training (and dev scoring) on the machine that ran it, and the dev curve
    curve = summary.get("dev_curve") or (dev_curve(summary["run_id"]) if isinstance(summary["run_id"], str) else [])
    if curve:
        entry.update(train_minutes=curve[-1]["minutes"], dev_curve=curve)
    if "minutes_to_paper_row" in summary:  # when dev first beat the paper's row in all eight columns (None: never)
        entry.update(minutes_to_paper_row=summary["minutes_to_paper_row"],
                     epoch_to_paper_row=summary["epoch_to_paper_row"])
    entry.update({
        **numbers, **({"best_dev_epoch": summary["best_dev_epoch"]} if summary["best_dev_epoch"] else {}),
        "command": command, "mlflow_run_id": summary["run_id"],
        "data": DATA})
    write(results)


def record_pipeline(key: str, summary: dict, command: str) -> None:
    """A whole `vsa pipeline` run (its RUN/summary.json): the command's wall minutes, each stage's, and both models'
    test numbers and MLflow runs."""
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    align, mrnn = summary["align"], summary["mrnn"]
    captions = {k: round(v, 4) for k, v in (mrnn.get("test") or {}).items()}
    results[key] = {
        "minutes": summary["minutes"], "stage_minutes": summary["stage_minutes"],
        **captions,
        "retrieval": {d: {k: round(v, 2) for k, v in align["test"][d].items()} for d in ("annotation", "search")},
        "align_train_minutes": align.get("train_minutes"), "mrnn_train_minutes": mrnn.get("train_minutes"),
        "command": command, "mlflow_run_ids": {"align": align["run_id"], "mrnn": mrnn["run_id"]},
        "data": DATA,
    }
    write(results)


def write(results: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
