"""Checkpoints: what a worker reports each epoch, what a restarted worker resumes from, and ``best.pt``."""

from __future__ import annotations

import dataclasses
import io
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vsa_dist.io import atomic_write_bytes

CHECKPOINT = "checkpoint.pt"


def restore(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, dict[str, Any]]:
    """Inside a train loop: load Ray Train's last checkpoint, if any. Returns (first epoch to run, best-so-far)."""
    import ray.train

    checkpoint = ray.train.get_checkpoint()
    if not checkpoint:
        return 1, {"score": float("-inf"), "epoch": 0, "state": None}
    with checkpoint.as_directory() as folder:
        state = torch.load(Path(folder) / CHECKPOINT, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return state["epoch"] + 1, state["best"]


def keep_if_best(best: dict[str, Any], score: float, epoch: int, model: torch.nn.Module) -> dict[str, Any]:
    if score > best["score"]:
        return {
            "score": score,
            "epoch": epoch,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }
    return best


def end_epoch(loop_config: dict[str, Any], logger, metrics: dict[str, Any], score: float, best: dict[str, Any],
              model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0 after its dev evaluation: keep the best model, log the epoch, build the checkpoint state.
    Returns (best, checkpoint state)."""
    epoch = metrics["epoch"]
    best = keep_if_best(best, score, epoch, model)
    metrics["best_dev_epoch"] = best["epoch"]
    log_epoch(logger, loop_config["mlflow_run_id"], metrics, epoch)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
             "model_args": dataclasses.asdict(model.args),  # what rebuilds the model; config: what evaluation needs
             "config": loop_config["cfg"], "vocab": loop_config["vocab"], "feature_dim": loop_config["feature_dim"],
             "feature_settings": loop_config["feature_settings"]}
    return best, state


def log_epoch(logger, run_id: str, metrics: dict[str, Any], epoch: int) -> None:
    for key, value in metrics.items():
        logger.log_metric(run_id, key, float(value), step=epoch)


def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Every rank calls this once per epoch; rank 0 passes the checkpoint state (the others None)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="vsa-ckpt-") as scratch:  # report copies it to storage
        checkpoint = None
        if state is not None:
            torch.save(state, Path(scratch) / CHECKPOINT)
            checkpoint = ray.train.Checkpoint.from_directory(scratch)
        ray.train.report(metrics, checkpoint=checkpoint)


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
