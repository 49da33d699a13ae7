"""Where data and run outputs live by default; every default can be overridden, and none depends on the folder a
command is started from (a `vsa caption` in ~/photos finds the same runs and registry as one in the checkout)."""

from __future__ import annotations

import os
from pathlib import Path

# The shared data folder sits beside the checkout (../shared/data); VSA_DATA_ROOT points elsewhere.
DATA_ROOT_ENV = "VSA_DATA_ROOT"
# All outputs of a local run (shards, features, checkpoints, the MLflow store) go under one folder.
RUNS_ROOT_ENV = "VSA_RUNS_ROOT"


def checkout() -> Path | None:
    """The source checkout this package runs from (an editable install, `scripts/setup.sh`), or None when it was
    installed as a wheel."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").is_file() and (root / "vsa_dist").is_dir() else None


def user_home() -> Path:
    """The per-user folder of an installed vsa-dist: $XDG_DATA_HOME/vsa-dist (~/.local/share/vsa-dist)."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "vsa-dist"


def data_root() -> Path:
    if os.environ.get(DATA_ROOT_ENV):
        return Path(os.environ[DATA_ROOT_ENV])
    root = checkout()
    return root.parent / "shared" / "data" if root else user_home() / "data"


def runs_root() -> Path:
    """$VSA_RUNS_ROOT, else the checkout's runs/ (git-ignored), else the per-user home's runs/."""
    if os.environ.get(RUNS_ROOT_ENV):
        return Path(os.environ[RUNS_ROOT_ENV])
    root = checkout()
    return (root if root else user_home()) / "runs"
