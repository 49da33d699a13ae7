"""What every Ray Train stage shares, by concern: its config (``config``), optimisers and schedules (``optim``), the
train stream (``streams``), checkpoints and the best model (``state``), where the loop runs (``session``: a Ray Train
worker, or one process in a tuning trial), the Ray and MLflow run (``run``) and the one epoch loop both stages run
(``loop``). The stages feed the loop their model, step and evaluation.

Each name is imported from its module on first use (PEP 562): a stage's config (``TrainConfig``) needs neither torch
nor Ray, so ``vsa train-align --help`` answers without loading them."""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "config": ("LR_SCHEDULES", "OPTIMIZERS", "TrainConfig", "check_features"),
    "loop": ("Task", "run_epochs"),
    "optim": ("epoch_lr", "make_optimizer", "set_lr"),
    "run": ("Trained", "all_cores", "finish", "first_reached", "fit", "ray_storage", "say", "start_run", "train"),
    "session": ("CHECKPOINT", "InProcessSession", "RayTrainSession", "RunSpec"),
    "state": ("end_epoch", "keep_if_best", "log_epoch", "restore", "save_best", "write_best"),
    "streams": ("DataClock", "EpochStreams", "epoch_streams", "train_dataset"),
}
_MODULE_OF = {name: module for module, names in _WHERE.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    if name not in _MODULE_OF:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
    globals()[name] = value
    return value
