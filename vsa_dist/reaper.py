"""Cleans up after a local Ray whose driver died without shutting it down (SIGKILL, OOM killer, a lost terminal).

Ray's raylet and GCS share the driver's fate, but its DashboardAgent and RuntimeEnvAgent outlive it, reparented
to init and ignoring SIGTERM. ``ensure_ray`` starts this watchdog, in its own session, when it has started a
local Ray: while the driver lives it notes the driver's Ray processes; once the driver is gone it kills those
still running and exits. Only processes it saw as the driver's descendants, with their start times (a PID reused
by another program is never touched), and only Ray's own.

    python -m vsa_dist.reaper DRIVER_PID
"""

from __future__ import annotations

import sys
import time

import psutil

POLL_S = 1.0
GRACE_S = 3.0


def is_rays(process: psutil.Process) -> bool:
    """A process of Ray's own (workers ``ray::…``, raylet, GCS, Ray's Python services), not anything else a
    driver ran."""
    try:
        name, cmdline = process.name(), " ".join(process.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return False
    return name.startswith("ray::") or cmdline.startswith("ray::") or "/site-packages/ray/" in cmdline


def watch(driver_pid: int) -> int:
    """Wait for the driver to end, then kill the Ray processes it left. Returns how many were killed."""
    try:
        driver = psutil.Process(driver_pid)
    except psutil.NoSuchProcess:
        return 0
    seen: dict[int, float] = {}
    while driver.is_running() and driver.status() != psutil.STATUS_ZOMBIE:
        try:
            for child in driver.children(recursive=True):
                if child.pid not in seen and is_rays(child):
                    seen[child.pid] = child.create_time()
        except psutil.NoSuchProcess:
            break
        time.sleep(POLL_S)
    time.sleep(GRACE_S)  # a driver that ended normally has shut its Ray down by now
    left = []
    for pid, started in seen.items():
        try:
            process = psutil.Process(pid)
            if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                left.append(process)
        except psutil.NoSuchProcess:
            continue
    for process in left:
        try:
            process.kill()  # the agents ignore SIGTERM
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(left, timeout=5)
    return len(left)


if __name__ == "__main__":
    watch(int(sys.argv[1]))
