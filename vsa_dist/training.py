"""What every Ray Train stage shares: the run record and MLflow run, the trainer, checkpoints, the best
model, learning-rate schedules. The stages keep their own train loops (read top to bottom there).

A stage's run folder holds ``run.json`` (the Ray Train run name, the MLflow run id, the feature
settings), Ray Train's storage under ``ray/`` (per-epoch checkpoints) and, at the end, ``best.pt``.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist.io import atomic_write_bytes, atomic_write_json

CHECKPOINT = "checkpoint.pt"


def make_optimizer(kind: str, model: torch.nn.Module, lr: float, momentum: float, weight_decay: float):
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if kind == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.99, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer {kind!r} is not sgd, adam or rmsprop")


OPTIMIZERS = ("sgd", "adam", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch (1-based); a function of the epoch alone, so a resumed run needs no state."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def check_choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise cfglib.ConfigError(f"{key} {value!r} is not one of {allowed}")


@contextmanager
def all_cores(threads: int) -> Iterator[None]:
    """Rank 0 evaluates while the other ranks wait at the report barrier: it may use every core meanwhile."""
    torch.set_num_threads(max(threads, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


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
        return {"score": score, "epoch": epoch, "state": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}}
    return best


def report(metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
    """Every rank calls this once per epoch; rank 0 passes the checkpoint state (the others None)."""
    import ray.train

    with tempfile.TemporaryDirectory(prefix="vsa-ckpt-") as scratch:  # report copies it to storage
        checkpoint = None
        if state is not None:
            torch.save(state, Path(scratch) / CHECKPOINT)
            checkpoint = ray.train.Checkpoint.from_directory(scratch)
        ray.train.report(metrics, checkpoint=checkpoint)


def start_run(cfg: Any, out: Path, settings: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Start the MLflow run and write ``run.json``, or with ``cfg.resume`` reopen the recorded ones."""
    import mlflow

    from vsa_dist.tracking import use_experiment

    record_path = out / "run.json"
    record = json.loads(record_path.read_text()) if cfg.resume and record_path.is_file() else None
    if cfg.resume and record is None:
        raise cfglib.ConfigError(f"--resume: no earlier run recorded in {record_path}")
    if record and record["feature_settings"] != settings:
        raise cfglib.ConfigError("--resume: the features differ from those the run started with")
    experiment_id = use_experiment(cfg.experiment)
    if record is None:
        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        mlflow.log_params(cfglib.to_dict(cfg))
        mlflow.log_dict({"config": cfglib.to_dict(cfg), "feature_settings": settings}, "config.json")
        record = {"name": name, "mlflow_run_id": run.info.run_id, "feature_settings": settings}
        atomic_write_json(record_path, record)
    else:
        mlflow.start_run(run_id=record["mlflow_run_id"])
    return record


def fit(train_loop: Callable[[dict[str, Any]], None], loop_config: dict[str, Any], cfg: Any, record: dict[str, Any],
        out: Path, datasets: dict[str, Any]):
    """Ray Train DDP over ``cfg.workers`` workers; the same run name and storage resume a stopped run."""
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, "cfg": cfglib.to_dict(cfg), "mlflow_run_id": record["mlflow_run_id"],
                           "tracking_uri": mlflow.get_tracking_uri()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker={"CPU": cfg.threads} if not cfg.use_gpu else None),
        run_config=ray.train.RunConfig(
            name=record["name"], storage_path=str(out / "ray"),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {record['name']} reported no checkpoint")
    return result


def save_best(result, out: Path, load_model: Callable[[Path], tuple[torch.nn.Module, dict[str, Any]]]):
    """The best-on-dev model of the last checkpoint → ``OUT/best.pt`` (no optimizer state). Returns (model, state, path)."""
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


def log_epoch(logger, run_id: str, metrics: dict[str, Any], epoch: int) -> None:
    for key, value in metrics.items():
        logger.log_metric(run_id, key, float(value), step=epoch)
