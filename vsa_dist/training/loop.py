"""The one epoch loop both training stages run on every Ray Train worker, read top to bottom.

A stage gives it a ``Task``: its model, its dev split, its step and its evaluation. The loop does the rest the same
way for both: resume from Ray Train's last checkpoint, wrap the model for DDP, stream each epoch's batches (with
read-ahead), clip and step, time the data wait, and on rank 0 (the one rank that evaluates, logs and writes
checkpoints) score dev, keep the best model, log to MLflow and report the checkpoint.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, Protocol

import torch

from vsa_dist.training.optim import epoch_lr, make_optimizer, set_lr
from vsa_dist.training.run import all_cores, say, worker_setup
from vsa_dist.training.state import end_epoch, report, restore
from vsa_dist.training.streams import DataClock, epoch_streams


class Task(Protocol):
    """What a training stage gives the epoch loop."""

    cfg: Any  # the stage's config (a TrainConfig)

    def build_model(self) -> torch.nn.Module:
        """The untrained model."""

    def rows_per_worker(self, world: int) -> int:
        """Images per worker in a batch."""

    def initialise(self, model: torch.nn.Module) -> None:
        """A fresh run (no checkpoint restored) may start from other weights (``--init``)."""

    def prepare(self, rank: int, world: int) -> None:
        """Before the first epoch, on every worker, while the first shards are read: per-worker state, and on rank 0
        the dev split."""

    def step(self, model: torch.nn.Module, plain: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch: the loss to backpropagate and the step's sums to add up over the epoch."""

    def train_metrics(self, sums: Counter, steps: int, seconds: float, world: int) -> tuple[dict[str, float], str]:
        """The epoch's train metrics from its sums, and how they read in the epoch's line."""

    def evaluate(self, plain: torch.nn.Module) -> tuple[float, dict[str, float], str]:
        """Rank 0 after the epoch: (the score the best model is chosen by, the dev metrics, how they read)."""


def run_epochs(loop_config: dict[str, Any], task: Task) -> None:
    """Runs on every Ray Train worker: restore → epochs of steps → report (rank 0: evaluate, log, checkpoint)."""
    import ray.train
    import ray.train.torch
    from mlflow.tracking import MlflowClient

    cfg = task.cfg
    rank, world, device = worker_setup(cfg)
    model = task.build_model()
    optimizer = make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay)
    start_epoch, best = restore(model, optimizer)
    if start_epoch == 1:
        task.initialise(model)
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    rows = task.rows_per_worker(world)
    # with read-ahead, the first epoch's shards are read while the task prepares (rank 0 loads dev)
    streams = epoch_streams(ray.train.get_dataset_shard("train"), cfg, rows, device, start=start_epoch <= cfg.epochs)
    task.prepare(rank, world)
    logger = MlflowClient(loop_config["tracking_uri"]) if rank == 0 else None

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        lr = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        set_lr(optimizer, lr)
        sums, steps = Counter(), 0
        clock = DataClock(streams.take())
        for batch in clock:
            optimizer.zero_grad(set_to_none=True)
            loss, step_sums = task.step(model, plain, batch)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip)
            optimizer.step()
            sums.update(step_sums)
            steps += 1
        timing = clock.metrics()
        if epoch < cfg.epochs:
            streams.start_next()  # with read-ahead, its first shards are read while rank 0 scores dev
        seconds = timing.pop("seconds")
        train_metrics, train_line = task.train_metrics(sums, steps, seconds, world)
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "steps": steps, **train_metrics, **timing}
        state = None
        if rank == 0:
            with all_cores(cfg.threads):
                score, dev_metrics, dev_line = task.evaluate(plain)
            metrics.update(dev_metrics)
            best, state = end_epoch(loop_config, logger, metrics, score, best, plain, optimizer)
            say(f"epoch {epoch}: {train_line}, {dev_line}, data wait {100 * metrics['data_wait_share']:.1f}% "
                f"({metrics['first_batch_wait_s']:.1f} s of it for the first batch)")
        report(metrics, state)
