"""Checkpoints: what a worker reports each epoch, what a restarted worker resumes from, and ``best.pt``."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from vsa_dist import config as cfglib
from vsa_dist.io import atomic_write_bytes
from vsa_dist.training.session import CHECKPOINT, RunSpec


def restore(checkpoint: Path | None, model: torch.nn.Module, optimizer: torch.optim.Optimizer
            ) -> tuple[int, dict[str, Any], float, dict[str, torch.Tensor] | None]:
    """Inside a train loop: load the session's last checkpoint, if any. Returns (first epoch to run, best-so-far,
    minutes the run had taken, the moving average of the weights it kept or None)."""
    if checkpoint is None:
        return 1, {"score": float("-inf"), "epoch": 0, "state": None}, 0.0, None
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    # older checkpoints: no minutes
    return state["epoch"] + 1, state["best"], float(state.get("minutes", 0.0)), state.get("averaged")


def moving_average(model: torch.nn.Module, decay: float, saved: dict[str, torch.Tensor] | None = None
                   ) -> AveragedModel | None:
    """With ``decay`` > 0, a copy of the model whose weights follow the trained ones as an exponential moving average:
    ``update_parameters(model)`` after each step (the first copies them, unless a resumed run's ``saved`` average is
    given). Once a run has stopped improving its weights wander around the region it has reached, and the average
    of the last few hundred steps lies nearer its middle than any one step does (Polyak averaging, SWA). None
    without a decay."""
    if not decay:
        return None
    averaged = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay))
    if saved is not None:
        averaged.module.load_state_dict(saved)
        averaged.n_averaged.fill_(1)
    return averaged


def keep_if_best(best: dict[str, Any], score: float, epoch: int, model: torch.nn.Module) -> dict[str, Any]:
    if score > best["score"]:
        return {
            "score": score,
            "epoch": epoch,
            "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        }
    return best


def end_epoch(spec: RunSpec, logger, metrics: dict[str, Any], score: float, best: dict[str, Any],
              model: torch.nn.Module, optimizer: torch.optim.Optimizer, scored: torch.nn.Module | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0 after its dev evaluation of ``scored`` (the moving average of ``model``'s weights, or ``model``): keep
    the best one, log the epoch, build the checkpoint state. Returns (best, checkpoint state)."""
    epoch, scored = metrics["epoch"], scored if scored is not None else model
    best = keep_if_best(best, score, epoch, scored)
    metrics["best_dev_epoch"] = best["epoch"]
    log_epoch(logger, spec.mlflow_run_id, metrics, epoch)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
             "minutes": metrics["minutes"],
             "model_args": dataclasses.asdict(model.args),  # what rebuilds the model; config: what evaluation needs
             "config": cfglib.to_dict(spec.cfg), "vocab": spec.vocab, "feature_dim": spec.feature_dim,
             "feature_settings": spec.feature_settings}
    if scored is not model:
        state["averaged"] = scored.state_dict()
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
    """The inference checkpoint: the chosen weights as ``model``, metadata, ``extra`` keys; atomically. The weights
    once: not again as the best state, nor the moving average it came from (a model that carries its CNN: lite0 alone
    is 18 MB)."""
    buffer = io.BytesIO()
    metadata = {key: value for key, value in state.items() if key != "averaged"}
    torch.save({**metadata, "best": {**state["best"], "state": None}, "model": model.state_dict(), "optimizer": {},
                **extra}, buffer)
    atomic_write_bytes(path, buffer.getvalue())
