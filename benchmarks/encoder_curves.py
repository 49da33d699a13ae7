"""Learning efficiency of the image encoder's modes: dev rsum against wall-clock minutes, one line a recorded run.

    python benchmarks/encoder_curves.py --runs modern,cached_12,cached_15 --out docs/images/encoder-flickr8k.png

Each run is an entry of ``retrieval`` in the results file (docs/results/flickr8k.json), as ``vsa train-align`` wrote
its summary: its ``dev_curve`` (dev R@1+5+10 sum and minutes since the run began, an epoch a point) and
``train_minutes``. Prints each run's best dev rsum, its minutes, and the minutes until dev first reached the paper's
test rsum (199.9) and until it first beat the paper's whole test row (``minutes_to_paper_row``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import plot_dev_curves  # noqa: E402
from benchmarks.learning import PAPER_RSUM, first_minute  # noqa: E402


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default=str(REPO / "docs" / "results" / "flickr8k.json"))
    parser.add_argument("--runs", required=True, help="comma-separated names under the file's retrieval")
    parser.add_argument("--out", required=True, help="the plot (PNG)")
    args = parser.parse_args(argv)
    recorded = json.loads(Path(args.results).read_text())["retrieval"]
    runs = []
    for name in args.runs.split(","):
        if name not in recorded:
            parser.error(f"{args.results}: no run {name!r} under retrieval")
        entry = recorded[name]
        curve = entry["dev_curve"]
        row = {"run": name, "dev_curve": curve, "train_minutes": entry["train_minutes"],
               "best_dev_rsum": max(p["dev_score"] for p in curve),
               "minutes_to_paper_rsum": first_minute(curve, lambda p: p["dev_score"] >= PAPER_RSUM),
               "minutes_to_paper_row": entry.get("minutes_to_paper_row")}
        runs.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "dev_curve"}))
    plot_dev_curves(runs, Path(args.out), "dev R@1+5+10 sum (both directions)",
                    "Flickr8k dev: the image encoder frozen or trained (this 2-core CPU)",
                    reference=(PAPER_RSUM, "the paper's test rsum"))
    return runs


if __name__ == "__main__":
    main()
