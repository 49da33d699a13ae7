"""Learning efficiency of alignment presets: wall-clock minutes until dev first reaches the paper's numbers.

    python benchmarks/learning.py --features runs/flickr8k/features \
        --run train_align_modern --run "train_align_brnn_mean --epochs 6 --test false" \
        --run "train_align --epochs 3 --test false"

Each ``--run`` is a preset and any extra ``vsa train-align`` options; the runs go one after another, each in a
fresh process with its own local Ray, on the same machine in one invocation, so their minutes compare (the first is
tested on test once, its best-on-dev model, as ``vsa train-align`` does). From
each run's dev curve (MLflow): the minutes until dev R@1+5+10 first reached the paper's test rsum (199.9), and
until dev first beat the paper's test row in all eight columns; the ratio of the first run's minutes to each
other run's. A run that never got there within its epochs gives a bound: its minutes are at least its whole
run's ("> N"); so also the first run's best dev rsum within each other run's minutes (``at_equal_minutes``).
Writes WORK/learning.json, the dev curves against minutes (WORK/learning.png) and a table of each run's minutes,
best dev rsum and test row (WORK/learning.md; default runs/bench/learning/);
``--from-json`` redoes all three from the runs recorded there, without training.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import plot_dev_curves, run_stage  # noqa: E402
from vsa_dist.eval.retrieval import PAPER_ROW  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402

PAPER_RSUM = sum(PAPER_ROW[d][k] for d in PAPER_ROW for k in ("r1", "r5", "r10"))


def first_minute(curve: list[dict], reached) -> float | None:
    return next((point["minutes"] for point in curve if reached(point)), None)


def one_run(features: Path, work: Path, index: int, spec: str) -> dict:
    preset, *extra = shlex.split(spec)
    out = work / f"{index}-{preset}"
    run_stage(["train-align", "--features", str(features), "--out", str(out), "--preset", preset, "--register-as", "",
               "--experiment", "bench-learning", "--progress", "false", *extra], work / f"{index}-{preset}.log")
    return summary_row(spec, out / "summary.json")


def summary_row(spec: str, path: Path) -> dict:
    """A run's row from its ``summary.json`` (vsa train-align writes it beside best.pt)."""
    summary, out = json.loads(path.read_text()), path.parent
    curve = summary["dev_curve"]
    row = {"run": spec, "mlflow_run_id": summary["run_id"], "summary": str(out / "summary.json"),
           "train_minutes": summary["train_minutes"],
           "epochs": len(curve), "best_dev_rsum": round(summary["best_dev_rsum"], 1),
           "minutes_to_paper_rsum": first_minute(curve, lambda p: p["dev_score"] >= PAPER_RSUM),
           "minutes_to_paper_row": summary["minutes_to_paper_row"], "best_dev_epoch": summary["best_dev_epoch"],
           "test": summary.get("test"), "dev_curve": curve}
    print(f"  {spec}: {json.dumps({k: v for k, v in row.items() if k != 'dev_curve'})}", flush=True)
    return row


def ratio(first: dict, other: dict, key: str) -> str | float | None:
    """How many times fewer minutes the first run needed than ``other``: a number, a bound, or None."""
    if first[key] is None:
        return None
    if other[key] is None:  # the other never got there: it would have needed more than its whole run
        return f"> {other['train_minutes'] / first[key]:.1f}"
    return round(other[key] / first[key], 2)


def plot(result: dict, path: Path) -> None:
    """Dev rsum against wall-clock minutes, one line a run, and the paper's test rsum for scale."""
    features = Path(result["features"])
    plot_dev_curves(result["runs"], path, "dev R@1+5+10, both directions",
                    f"Learning efficiency, {features.parent.name}/{features.name}",
                    reference=(result["paper_rsum"], "the paper's test rsum (199.9)"))


def table(result: dict) -> str:
    """The runs as a Markdown table: minutes, best dev rsum and epoch, and the best-on-dev model's test row."""
    lines = ["| run | train minutes | best dev rsum (epoch) | annotation R@1 | R@5 | R@10 | med r | search R@1 | R@5 "
             "| R@10 | med r |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["runs"]:
        test = row.get("test") or {}
        cells = [f"{test[d][k]:.1f}".removesuffix(".0") if d in test else "" for d in ("annotation", "search")
                 for k in ("r1", "r5", "r10", "medr")]
        lines.append(f"| `{row['run']}` | {row['train_minutes']:.1f} | {row['best_dev_rsum']:.1f} "
                     f"({row.get('best_dev_epoch', '')}) | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write(result: dict, work: Path) -> None:
    (work / "learning.json").write_text(json.dumps(result, indent=1))
    (work / "learning.md").write_text(table(result))
    plot(result, work / "learning.png")


def at_minutes(curve: list[dict], minutes: float) -> float | None:
    """A run's best dev rsum within its first ``minutes`` (None: no epoch had ended by then)."""
    scores = [point["dev_score"] for point in curve if point["minutes"] <= minutes]
    return round(max(scores), 1) if scores else None


def compare(features: str, rows: list[dict]) -> dict:
    """The runs side by side: the first run's speed-up in minutes to the paper's dev rsum and to its row (a bound
    where the other run never got there), and the first run's best dev rsum within each other run's minutes."""
    first = rows[0]
    return {"features": features, "paper_rsum": round(PAPER_RSUM, 1), "runs": rows,
            "speedup_to_paper_rsum": {o["run"]: ratio(first, o, "minutes_to_paper_rsum") for o in rows[1:]},
            "speedup_to_paper_row": {o["run"]: ratio(first, o, "minutes_to_paper_row") for o in rows[1:]},
            "at_equal_minutes": {o["run"]: {"minutes": o["train_minutes"], "its_best_dev_rsum": o["best_dev_rsum"],
                                            "first_run_best_dev_rsum": at_minutes(first["dev_curve"],
                                                                                  o["train_minutes"])}
                                 for o in rows[1:]}}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--work", default=str(runs_root() / "bench" / "learning"))
    parser.add_argument("--run", action="append", default=[],
                        help="a preset and extra train-align options (repeat; the first is compared to the others)")
    parser.add_argument("--from-json", action="store_true",
                        help="no training: redo the comparison and the plot from the runs in WORK/learning.json")
    parser.add_argument("--add", action="append", default=[], metavar="LABEL=SUMMARY_JSON",
                        help="with --from-json: add a train-align run from elsewhere (same features, same machine)")
    args = parser.parse_args(argv)
    work = Path(args.work)
    if args.from_json:
        saved = json.loads((work / "learning.json").read_text())
        added = [summary_row(label, Path(path)) for label, path in (item.split("=", 1) for item in args.add)]
        # each run re-read from its summary where it is still there (rows written by older code gain new columns)
        runs = [summary_row(r["run"], Path(r["summary"])) if Path(r["summary"]).is_file() else r for r in saved["runs"]]
        result = compare(saved["features"], runs + added)
        write(result, work)
        print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
        return result
    runs = args.run or ["train_align_modern", "train_align_brnn_mean --epochs 6 --test false",
                        "train_align --epochs 3 --test false"]
    work.mkdir(parents=True, exist_ok=True)
    rows = [one_run(Path(args.features), work, i, spec) for i, spec in enumerate(runs)]
    result = compare(args.features, rows)
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}))
    write(result, work)
    return result


if __name__ == "__main__":
    main()
