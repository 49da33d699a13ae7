"""Run a command and report the CPU seconds each kind of process spent while it ran (Ray actors, tasks,
raylet, GCS, dashboard, the driver), to see where a pipeline's cores go.

    python benchmarks/cpu_by_process.py -- vsa features --shards runs/flickr8k/shards --out /tmp/f \
        --splits dev,test --progress false

Samples every process on the machine twice a second (psutil) and keeps each one's last CPU time minus
what it had used before the command started; processes that live shorter than a sample are missed.
"""

from __future__ import annotations

import collections
import os
import subprocess
import sys
import time

import psutil

RAY_KINDS = ("RegionExtractor", "ReadWebDataset", "SnippetAligner", "RayTrainWorker", "SplitCoordinator",
             "dashboard", "log_monitor", "monitor.py", "runtime_env", "vsa_dist.cli", "ray::")


def kind(proc: psutil.Process) -> str:
    try:
        name, cmdline = proc.name(), " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if name in ("raylet", "gcs_server"):
        return name
    return next((k for k in RAY_KINDS if k in cmdline), name)


def cpu_seconds(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def main(argv: list[str]) -> None:
    command = argv[argv.index("--") + 1:] if "--" in argv else argv
    if not command:
        raise SystemExit(__doc__)
    before = {}
    for proc in psutil.process_iter():
        try:
            before[proc.pid] = cpu_seconds(proc)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    used: dict[int, tuple[str, float]] = {}
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    start = time.time()
    child = subprocess.Popen(command, env=env)
    while child.poll() is None:
        for proc in psutil.process_iter():
            try:
                label = used[proc.pid][0] if proc.pid in used and used[proc.pid][0] != "?" else kind(proc)
                used[proc.pid] = (label, cpu_seconds(proc) - before.get(proc.pid, 0.0))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        time.sleep(0.5)
    wall = time.time() - start
    totals: collections.Counter = collections.Counter()
    for label, seconds in used.values():
        totals[label] += seconds
    print(f"wall {wall:.1f} s on {os.cpu_count()} CPUs ({wall * (os.cpu_count() or 1):.0f} CPU-seconds available)")
    for label, seconds in totals.most_common(15):
        print(f"{seconds:8.1f} s  {label}")
    sys.exit(child.returncode)


if __name__ == "__main__":
    main(sys.argv[1:])
