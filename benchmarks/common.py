"""Helpers shared by the benchmarks: run a CLI stage in a fresh process and sample its memory."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def object_store_pages(proc: psutil.Process) -> int:
    """Bytes of Ray's object store (its shared-memory file) resident in ``proc``'s mappings: the blocks it has read.
    They count in its RSS, yet they are the store's memory, shared with every process that maps them."""
    return sum(m.rss for m in proc.memory_maps() if m.path.startswith("/dev/shm/plasma"))


class TreeMemory:
    """Peak memory of a process and all its descendants (the Ray head, raylet and workers included):
    the sum of PSS (shared pages counted once, split among their users); and of the driver, its RSS, the object
    store pages among them, and its own memory: RSS less those pages (Ray's docs measure a worker's heap so)."""

    def __init__(self, pid: int, interval: float = 0.5):
        self.root, self.interval = psutil.Process(pid), interval
        self.peak_pss = self.peak_driver_rss = self.peak_driver_own = self.peak_driver_store = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
                rss, store = self.root.memory_info().rss, object_store_pages(self.root)
            except (psutil.NoSuchProcess, FileNotFoundError, ProcessLookupError):
                return
            self.peak_driver_rss = max(self.peak_driver_rss, rss)
            self.peak_driver_store = max(self.peak_driver_store, store)
            self.peak_driver_own = max(self.peak_driver_own, rss - store)
            for proc in procs:
                try:
                    total += proc.memory_full_info().pss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            self.peak_pss = max(self.peak_pss, total)
            self._stop.wait(self.interval)

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        return {
            "peak_tree_pss_mib": round(self.peak_pss / 2**20),
            "peak_driver_rss_mib": round(self.peak_driver_rss / 2**20),
            "peak_driver_own_mib": round(self.peak_driver_own / 2**20),
            "peak_driver_object_store_mib": round(self.peak_driver_store / 2**20),
        }


def run_stage(args: list[str], log: Path, kill_when=None) -> dict:
    """One CLI run in a fresh process with its own local Ray; its memory is sampled from outside. With
    ``kill_when`` (a function polled every second), the run is SIGKILLed once it returns true, as a crash
    would stop it; the result then says ``killed`` and the exit code is not checked."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["RAY_DATA_DISABLE_PROGRESS_BARS"] = "1"
    killed = False
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "vsa_dist.cli", *args], stdout=fh, stderr=subprocess.STDOUT,
                                env=env, cwd=REPO)
        memory = TreeMemory(proc.pid)
        while (code := proc.poll()) is None:
            if kill_when is not None and not killed and kill_when():
                proc.kill()
                killed = True
            time.sleep(1)
    result = memory.stop()
    if code != 0 and not killed:
        raise SystemExit(f"{' '.join(args)} failed with {code}; see {log}")
    return {**result, "killed": killed}


def plot_dev_curves(runs: list[dict], path: Path, ylabel: str, title: str, scale: float = 1.0,
                    reference: tuple[float, str] | None = None) -> None:
    """Each run's dev score (times ``scale``) against wall-clock minutes, one line a run, and an optional
    horizontal reference line (value, label) for scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for row in runs:
        curve = row.get("dev_curve", [])
        ax.plot([p["minutes"] for p in curve], [scale * p["dev_score"] for p in curve], marker=".", label=row["run"])
    if reference is not None:
        ax.axhline(reference[0], color="grey", linestyle="--", label=reference[1])
    ax.set_xlabel("wall-clock minutes (training and dev scoring)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
