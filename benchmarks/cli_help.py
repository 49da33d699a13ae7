"""How long ``vsa --help`` and each command's ``--help`` take, each in a fresh process (what a person waits for).

    python benchmarks/cli_help.py --repeat 3

Prints and writes (``--out``) JSON: the median seconds of each, and each command's ratio to ``python -c pass`` in
the same run (the interpreter's own start-up). A command's help needs only its config (``vsa_dist/configs.py``,
``vsa_dist/recipes/config.py``: no torch, Ray or MLflow), which ``vsa`` reads before it imports the stage; importing
the stage first would cost 1.7-4.9 s.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist.cli import COMMANDS  # noqa: E402


def seconds(argv: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, check=False)
        times.append(time.perf_counter() - start)
    return round(statistics.median(times), 2)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    commands = [[name, sub] if isinstance(table, dict) else [name]
                for name, table in COMMANDS.items() for sub in (table if isinstance(table, dict) else [None])]
    baseline = seconds(["-c", "pass"], args.repeat)
    result = {"python -c pass": baseline, "vsa --help": seconds(["-m", "vsa_dist.cli", "--help"], args.repeat)}
    for command in commands:
        result[f"vsa {' '.join(command)} --help"] = seconds(["-m", "vsa_dist.cli", *command, "--help"], args.repeat)
    summary = {"seconds": result, "ratio_to_python": {k: round(v / baseline, 1) for k, v in result.items()}}
    print(json.dumps(summary, indent=1), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(summary, indent=1))
    return summary


if __name__ == "__main__":
    main()
