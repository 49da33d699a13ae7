"""What a person sees while a command runs, and what goes to its log file instead.

Quiet by default: our own lines (each stage's start and summary, one line per epoch, one progress bar per stage)
reach the terminal; everything else a run prints — Ray's and its workers' logging, Ray Train's report dumps,
library warnings, the C++ core's error-level lines, which write to file descriptor 2 themselves — goes to the log
file. ``--verbose`` (or ``VSA_VERBOSE=1``) shows it all on the terminal as well, as Ray prints it.

Under ``ray job submit`` (``RAY_ADDRESS`` set) nothing is redirected: the job's own log is where people look.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from tqdm import tqdm

# Starts every line a train worker means for the terminal (``training.run.say``): the record separator, which
# prints as nothing where the mark is not stripped (a worker's own log file).
SAY_MARK = "\x1e"

_state: dict[str, Any] = {"log": None, "verbose": True, "err": None, "on_exit": []}


def on_exit(undo: Callable[[], None]) -> None:
    """Run ``undo`` when the current ``quiet`` ends (what was rerouted for it is put back)."""
    _state["on_exit"].append(undo)


def _undo_all() -> None:
    while _state["on_exit"]:
        _state["on_exit"].pop()()


def verbose() -> bool:
    return _state["verbose"]


def err() -> TextIO:
    """Where our own stderr lines go (progress bars, one-line errors): the terminal's stderr even while the rest of
    stderr goes to the log file."""
    return _state["err"] or sys.stderr


def say(line: str) -> None:
    """One line for the person at the terminal, beside the command's output (stdout stays the results)."""
    print(line, file=err(), flush=True)


@contextmanager
def quiet(log_path: Path | None, verbose: bool) -> Iterator[None]:
    """Send stderr (Python's and file descriptor 2's) to ``log_path`` for the duration, unless ``verbose``, or there
    is no log path, or the command runs as a Ray job; our stderr lines keep going to the terminal through ``err()``."""
    verbose = verbose or os.environ.get("VSA_VERBOSE", "") not in ("", "0") or bool(os.environ.get("RAY_ADDRESS"))
    if log_path is None or _state["log"] is not None:  # nested stages (the pipeline's) share the outer log
        yield
        return
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115 (closed below)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(sys.argv)}\n")
    _state.update(log=log, verbose=verbose)
    if verbose:
        try:
            yield
        finally:
            _undo_all()
            _state.update(log=None, verbose=True)
            log.close()
        return
    sys.stderr.flush()
    saved_fd = os.dup(2)
    saved_stderr = sys.stderr
    # The terminal's stderr, for our bars and errors; where stderr is not fd 2 (a test's capture), that object.
    terminal = open(os.dup(saved_fd), "w", buffering=1, encoding="utf-8", closefd=True) \
        if _is_fd(saved_stderr, 2) else saved_stderr  # noqa: SIM115
    os.dup2(log.fileno(), 2)
    sys.stderr = log
    _state["err"] = terminal
    try:
        yield
    finally:
        _undo_all()
        log.flush()
        os.dup2(saved_fd, 2)
        os.close(saved_fd)
        sys.stderr = saved_stderr
        if terminal is not saved_stderr:
            terminal.close()
        _state.update(log=None, verbose=True, err=None)
        log.close()


def _is_fd(stream: Any, fd: int) -> bool:
    try:
        return stream.fileno() == fd
    except (AttributeError, OSError, ValueError):
        return False


def _who(data: dict[str, Any]) -> str:
    name = data.get("actor_name") or data.get("task_name") or ""
    return f"({name} pid={data.get('pid')})".replace("( ", "(")


def logging_to_file() -> bool:
    return _state["log"] is not None


def worker_lines(data: dict[str, Any]) -> None:
    """Ray's batch of one worker's output lines, as the driver receives it (``vsa_dist.ray_env`` hands it here in
    place of Ray's printer): marked lines to the terminal, all of them to the log file."""
    log = _state["log"]
    for line in data.get("lines") or []:
        if line.startswith(SAY_MARK) and not _state["verbose"]:
            print(line[len(SAY_MARK):], flush=True)
        if log is not None:
            log.write(f"{_who(data)} {line.lstrip(SAY_MARK)}\n")


def progress_bar(items: Iterable[Any], total: int, what: str, enabled: bool = True,
                 size: Callable[[Any], int] = lambda _: 1) -> Iterator[Any]:
    """A stage's one progress bar (on the terminal, never in the log), counting ``size(item)`` per item."""
    with tqdm(total=total, desc=what, unit="img", file=err(), disable=None if enabled else True,
              dynamic_ncols=True) as bar:
        for item in items:
            yield item
            bar.update(size(item))
