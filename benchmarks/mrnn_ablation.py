"""Ablation of the generator's training settings on dev: one setting changed per run, the same epochs each.

    python benchmarks/mrnn_ablation.py --features runs/flickr8k/features --epochs 3 \
        --run "" --run "--feature-norm unit" --run "--dropout 0.25" --run "--lr 2e-3" --run "--optimizer adam"

Each ``--run`` is extra ``vsa train-mrnn`` options over ``--preset`` (default ``train_mrnn``, the paper's model and
settings); the runs go one after another, each in a fresh process with its own local Ray, on the same machine in
one invocation, so their minutes compare. None is scored on test (``--test false``): an ablation chooses on dev
(greedy, ``--beam 1``: no beam is chosen).
From each run's summary: its minutes, dev CIDEr (greedy) after every epoch and at its best epoch, and the dev
perplexity of its last epoch. Writes WORK/ablation.json, a Markdown table (WORK/ablation.md) and dev CIDEr against
minutes (WORK/ablation.png); ``--from-json`` redoes the table and the plot without training. A rerun into the same
WORK with the same preset and epochs keeps the runs it already holds (by their options) and trains only new ones.
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
from vsa_dist.paths import runs_root  # noqa: E402


def one_run(cfg: argparse.Namespace, work: Path, index: int, spec: str) -> dict:
    out, log = work / f"{index}-mrnn", work / f"{index}-mrnn.log"
    try:
        run_stage(["train-mrnn", "--features", cfg.features, "--out", str(out), "--preset", cfg.preset,
                   "--epochs", str(cfg.epochs), "--test", "false", "--beam", "1", "--register-as", "",
                   "--examples", "0", "--experiment", "bench-mrnn-ablation", "--progress", "false",
                   *shlex.split(spec)], log)
    except SystemExit as failed:  # one setting that breaks training is a finding, not the end of the ablation
        row = {"run": label(spec), "failed": f"{failed}", "log": str(log)}
        print(f"  {row['run']}: failed (see {log})", flush=True)
        return row
    summary = json.loads((out / "summary.json").read_text())
    row = {"run": label(spec), "mlflow_run_id": summary["run_id"],
           "train_minutes": summary["train_minutes"], "best_dev_epoch": summary["best_dev_epoch"],
           "best_dev_cider": round(100 * summary["best_dev_cider_greedy"], 1),
           "last_dev_perplexity": round(summary["last_epoch"]["dev_perplexity"], 2),
           "dev_curve": summary["dev_curve"]}
    print(f"  {row['run']}: {json.dumps({k: v for k, v in row.items() if k != 'dev_curve'})}", flush=True)
    return row


def label(spec: str) -> str:
    return spec or "(the preset as it is)"


def table(result: dict) -> str:
    lines = [f"| `vsa train-mrnn --preset {result['preset']}` and | train minutes | dev CIDEr by epoch (greedy) "
             "| best dev CIDEr | dev perplexity, last epoch |", "|---|---|---|---|---|"]
    for row in result["runs"]:
        if "failed" in row:
            lines.append(f"| `{row['run']}` | failed: {row['failed']} | | | |")
            continue
        curve = " / ".join(f"{100 * p['dev_score']:.1f}" for p in row["dev_curve"])
        lines.append(f"| `{row['run']}` | {row['train_minutes']:.1f} | {curve} | {row['best_dev_cider']:.1f} "
                     f"| {row['last_dev_perplexity']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    plot_dev_curves(result["runs"], path, "dev CIDEr (greedy), x 100",
                    f"Generator ablation, --preset {result['preset']}, {result['epochs']} epochs each", scale=100)


def write(result: dict, work: Path) -> None:
    (work / "ablation.json").write_text(json.dumps(result, indent=1))
    (work / "ablation.md").write_text(table(result))
    plot(result, work / "ablation.png")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--work", default=str(runs_root() / "bench" / "mrnn-ablation"))
    parser.add_argument("--preset", default="train_mrnn")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--run", action="append", default=[], help="extra vsa train-mrnn options (\"\": none)")
    parser.add_argument("--from-json", action="store_true", help="redo the table and plot from WORK/ablation.json")
    cfg = parser.parse_args(argv)
    work = Path(cfg.work)
    if cfg.from_json:
        result = json.loads((work / "ablation.json").read_text())
    else:
        work.mkdir(parents=True, exist_ok=True)
        result = {"features": cfg.features, "preset": cfg.preset, "epochs": cfg.epochs, "runs": []}
        done = {}
        if (work / "ablation.json").is_file():
            before = json.loads((work / "ablation.json").read_text())
            if all(before.get(key) == result[key] for key in ("features", "preset", "epochs")):
                done = {row["run"]: row for row in before["runs"]}
        for index, spec in enumerate(cfg.run or [""]):
            kept = done.get(label(spec))
            result["runs"].append(kept if kept and "failed" not in kept else one_run(cfg, work, index, spec))
            write(result, work)  # after every run: a long ablation stopped part-way keeps what it measured
    write(result, work)
    print(table(result))
    return result


if __name__ == "__main__":
    main()
