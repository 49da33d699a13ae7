"""Checkpoints: what a worker reports each epoch, what a restarted worker resumes from, and ``best.pt``."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist.io import atomic_write_bytes
from vsa_dist.training.session import CHECKPOINT, RunSpec


def restore(checkpoint: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer
            ) -> tuple[int, dict[str, Any], float]:
    """Inside a train loop: load the session's last checkpoint, if any. Returns (first epoch to run, best-so-far,
    minutes the run had taken)."""
    if checkpoint is None:
        return 1, {"score": float("-inf"), "epoch": 0, "state": None}, 0.0
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["best"], float(state.get("minutes", 0.0))  # older checkpoints: no minutes


def keep_if_best(best: dict[str, Any], score: float, epoch: int, model: torch.nn.Module) -> dict[str, Any]:
    if score > best["score"]:
        return {
            "score": score,
            "epoch": epoch,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }
    return best


def end_epoch(spec: RunSpec, logger, metrics: dict[str, Any], score: float, best: dict[str, Any],
              model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0 after its dev evaluation: keep the best model, log the epoch, build the checkpoint state.
    Returns (best, checkpoint state)."""
    epoch = metrics["epoch"]
    best = keep_if_best(best, score, epoch, model)
    metrics["best_dev_epoch"] = best["epoch"]
    log_epoch(logger, spec.mlflow_run_id, metrics, epoch)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
             "minutes": metrics["minutes"],
             "model_args": dataclasses.asdict(model.args),  # what rebuilds the model; config: what evaluation needs
             "config": cfglib.to_dict(spec.cfg), "vocab": spec.vocab, "feature_dim": spec.feature_dim,
             "feature_settings": spec.feature_settings}
    return best, state


def log_epoch(logger, run_id: str, metrics: dict[str, Any], epoch: int) -> None:
    for key, value in metrics.items():
        logger.log_metric(run_id, key, float(value), step=epoch)


def save_best(result, out: Path, load_model: Callable[[Path], tuple[torch.nn.Module, dict[str, Any]]]):
    """The best-on-dev model of the last checkpoint → ``OUT/best.pt`` (no optimizer state).
    Returns (model, state, path)."""
    with result.checkpoint.as_directory() as folder:
        model, state = load_model(Path(folder) / CHECKPOINT)
    final = out / "best.pt"
    write_best(final, model, state)
    return model, state, final


def write_best(path: Path, model: torch.nn.Module, state: dict[str, Any], **extra: Any) -> None:
    """The inference checkpoint: the chosen weights as ``model``, metadata, ``extra`` keys; atomically."""
    buffer = io.BytesIO()
    torch.save({**state, "model": model.state_dict(), "optimizer": {}, **extra}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
