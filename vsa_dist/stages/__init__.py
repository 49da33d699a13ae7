"""Stage runners: each has ``run(cfg)`` and ``main(argv)`` (its config is in ``vsa_dist/configs.py``, or for the
training stages ``vsa_dist/recipes/config.py``); jobs/ and ``vsa`` call ``main``, and every ``main`` is
``run_stage``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, TypeVar

from vsa_dist import config as cfglib
from vsa_dist import console, storage
from vsa_dist.paths import runs_root
from vsa_dist.tracking import end_interrupted_run

C = TypeVar("C")


def log_path(cfg: Any, prog: str) -> Path | None:
    """Where a command's full output goes while the terminal stays quiet: ``vsa-COMMAND.log`` in the pipeline's run
    folder, beside a stage's output folder, or under the runs root's ``logs/``."""
    name = "vsa-" + prog.removeprefix("vsa").strip().replace(" ", "-") + ".log"
    run_dir, out = getattr(cfg, "run_dir", ""), getattr(cfg, "out", "")
    if run_dir and not storage.is_remote(run_dir):
        return Path(run_dir) / name
    if out and not storage.is_remote(out):
        return Path(out).resolve().parent / name
    return runs_root() / "logs" / name


def run_stage(cls: type[C], run, argv: list[str] | None, prog: str, preset: str | None,
              input_errors: tuple[type[Exception], ...] = ()):
    """A stage's ``main``: parse and validate its config, run it; a bad config or input exits 2 with one line."""
    argv = list(sys.argv[1:] if argv is None else argv)
    cfg = cfglib.parse_args(cls, argv, prog=prog, preset=preset)
    try:
        if hasattr(cfg, "check_inputs"):
            cfg.check_inputs()
        with console.quiet(log_path(cfg, prog), verbose="--verbose" in argv):
            return run(cfg)
    except (cfglib.ConfigError, *input_errors) as err:
        end_interrupted_run(err)
        print(f"{prog}: error: {err}", file=console.err())
        raise SystemExit(2) from err
    except BaseException as err:  # Ray's driver turns SIGTERM into SystemExit
        end_interrupted_run(err)
        raise
