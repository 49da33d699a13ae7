"""Quiet by default: what a command prints for people reaches the terminal, the rest (stderr, file descriptor 2, the
workers' unmarked lines) goes to the log file; --verbose shows everything; defaults do not depend on the folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_script(tmp_path: Path, body: str, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(body))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("VSA_VERBOSE", None)
    env.pop("RAY_ADDRESS", None)
    return subprocess.run([sys.executable, str(script), *args], capture_output=True, text=True, env=env, cwd=tmp_path,
                          timeout=60)


QUIET = """
    import os, sys, warnings
    from pathlib import Path
    from vsa_dist import console

    with console.quiet(Path(sys.argv[1]), verbose=sys.argv[2] == "verbose"):
        print("epoch 1: for people")                          # our lines: stdout
        print("50%|#####     | bar", file=console.err())      # our bars and errors
        warnings.warn("a library's warning")                  # Python's stderr
        os.write(2, b"[E core_worker.cc:2465] a C++ line\\n")  # the fd itself, as Ray's C++ core writes
        console.worker_lines({"pid": 7, "actor_name": "RayTrainWorker",
                              "lines": [console.SAY_MARK + "epoch 2: from rank 0", "Reporting training result 2"]})
    print("after: stderr is back", file=sys.stderr)
"""


def test_quiet_sends_everything_but_our_lines_to_the_log(tmp_path):
    log = tmp_path / "run" / "vsa-x.log"
    done = run_script(tmp_path, QUIET, str(log), "quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["epoch 1: for people", "epoch 2: from rank 0"]
    assert done.stderr.splitlines() == ["50%|#####     | bar", "after: stderr is back"]
    text = log.read_text()
    for line in ("a library's warning", "a C++ line", "(RayTrainWorker pid=7) epoch 2: from rank 0",
                 "(RayTrainWorker pid=7) Reporting training result 2"):
        assert line in text, text
    assert "epoch 1: for people" not in text and console_mark() not in text


def test_verbose_shows_it_all_and_still_logs_the_workers(tmp_path):
    log = tmp_path / "vsa-x.log"
    done = run_script(tmp_path, QUIET, str(log), "verbose")
    assert done.returncode == 0, done.stderr
    assert "a library's warning" in done.stderr and "a C++ line" in done.stderr
    assert "epoch 2: from rank 0" not in done.stdout  # Ray's own printer shows worker lines in verbose mode
    assert "(RayTrainWorker pid=7) Reporting training result 2" in log.read_text()


def console_mark() -> str:
    from vsa_dist.console import SAY_MARK

    return SAY_MARK


def test_defaults_do_not_depend_on_the_current_folder(tmp_path, monkeypatch):
    from vsa_dist import paths

    monkeypatch.delenv(paths.RUNS_ROOT_ENV, raising=False)
    monkeypatch.delenv(paths.DATA_ROOT_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    assert paths.runs_root() == ROOT / "runs"  # this checkout's, wherever the command starts
    assert paths.data_root() == ROOT.parent / "shared" / "data"
    monkeypatch.setenv(paths.RUNS_ROOT_ENV, str(tmp_path / "elsewhere"))
    assert paths.runs_root() == tmp_path / "elsewhere"
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert paths.user_home() == tmp_path / "xdg" / "vsa-dist"
