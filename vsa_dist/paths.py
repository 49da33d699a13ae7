"""Where data and run outputs live by default; every default can be overridden."""

from __future__ import annotations

import os
from pathlib import Path

# The shared data folder sits beside the checkout (../shared/data); VSA_DATA_ROOT points elsewhere.
DATA_ROOT_ENV = "VSA_DATA_ROOT"
# All outputs of a local run (shards, features, checkpoints, the MLflow store) go under one folder.
RUNS_ROOT_ENV = "VSA_RUNS_ROOT"


def data_root() -> Path:
    return Path(os.environ.get(DATA_ROOT_ENV, "../shared/data"))


def runs_root() -> Path:
    return Path(os.environ.get(RUNS_ROOT_ENV, "runs"))
