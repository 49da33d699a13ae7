"""The one epoch loop both training stages run, on every Ray Train worker or alone in a tuning trial, read top to
bottom.

A stage gives it a ``Task``: its model, its dev split, its step and its evaluation. The loop does the rest the same
way for both: resume from the session's last checkpoint, wrap the model for DDP, stream each epoch's batches (with
read-ahead), clip and step, time the data wait, and on rank 0 (the one rank that evaluates, logs and writes
checkpoints) score dev, keep the best model, log to MLflow and report the epoch. With ``ema`` rank 0 also keeps a
moving average of the weights, and that average is what dev scores and what the best model keeps.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import torch
from mlflow.tracking import MlflowClient

from vsa_dist.console import SAY_MARK
from vsa_dist.training.optim import configure_groups, epoch_lr, make_optimizer, set_lr
from vsa_dist.training.session import InProcessSession, RayTrainSession, RunSpec, Trained
from vsa_dist.training.state import end_epoch, moving_average, restore
from vsa_dist.training.streams import DataClock, TrainStream, epoch_streams


class Task(Protocol):
    """A training stage's recipe. The class speaks for the driver (``training.run_recipe``, ``vsa tune``): its config,
    the train stream it reads, how its best model loads, and its ending; an instance runs the epoch loop on a worker
    (its model, its dev split, its step and its evaluation)."""

    name: str      # the stage, as its epoch lines start ("train-align"): two stages may share a terminal
    config: type   # its config dataclass (recipes/config.py; its PRESET: the one its command starts from)
    spec: RunSpec  # on a worker; spec.cfg: the stage's config (a TrainConfig)

    @staticmethod
    def stream(cfg: Any) -> TrainStream:
        """What the train stream carries for this config: the stage and every ``vsa tune`` trial read exactly this."""

    @staticmethod
    def check_checkpoints(cfg: Any) -> None:
        """Before any work: the checkpoints the config starts from or learns from are of the right kind."""

    @staticmethod
    def load_best(path: Any) -> tuple[torch.nn.Module, dict[str, Any]]:
        """A checkpoint's best model and its metadata."""

    @staticmethod
    def conclude(cfg: Any, trained: Trained) -> dict[str, Any]:
        """After training, on the driver (the MLflow run still open): test once, register; the stage's summary."""
    def __init__(self, spec: RunSpec) -> None: ...

    def build_model(self) -> torch.nn.Module:
        """The untrained model."""

    def param_groups(self, model: torch.nn.Module) -> list[dict[str, Any]]:
        """What the optimizer trains, in groups (``training.optim.make_optimizer``)."""

    def rows_per_worker(self, world: int) -> int:
        """Images per worker in a batch."""

    def initialise(self, model: torch.nn.Module) -> None:
        """A fresh run (no checkpoint restored) may start from other weights (``--init``)."""

    def prepare(self, rank: int, world: int) -> None:
        """Before the first epoch, on every worker, while the first shards are read: per-worker state, and on rank 0
        the dev split."""

    def begin_epoch(self, plain: torch.nn.Module, epoch: int) -> None:
        """Settings that change by epoch (a warm-up), on every worker."""

    def step(self, model: torch.nn.Module, plain: torch.nn.Module, batch: dict[str, torch.Tensor]
             ) -> tuple[torch.Tensor, dict[str, float]]:
        """One batch: the loss to backpropagate and the step's sums to add up over the epoch."""

    def train_metrics(self, sums: Counter, steps: int, seconds: float, world: int) -> tuple[dict[str, float], str]:
        """The epoch's train metrics from its sums, and how they read in the epoch's line."""

    def evaluate(self, plain: torch.nn.Module) -> tuple[float, dict[str, float], str]:
        """Rank 0 after the epoch: (the score the best model is chosen by, the dev metrics, how they read)."""


@contextmanager
def all_cores(threads: int, alone: bool = False) -> Iterator[None]:
    """Rank 0 evaluates while the other ranks wait at the report barrier: it may use every core meanwhile (not
    ``alone``: a process that may share the machine with other trials keeps to its ``threads``)."""
    torch.set_num_threads(threads if alone else max(threads, len(os.sched_getaffinity(0))))
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def say(message: str) -> None:
    """Print one line from a train worker once. Ray Train swaps ``print`` for a logger that also tees to
    ``sys.stdout`` whenever a library has wrapped it (MLflow does on rank 0), so a plain ``print`` reached
    the driver twice; printing to the process's own stdout takes neither path. The mark tells the driver's console
    (``vsa_dist.console``) that this line is for the terminal, not only the log file."""
    print(SAY_MARK + message, file=sys.__stdout__, flush=True)


def run_epochs(task: Task, session: RayTrainSession | InProcessSession | None = None) -> None:
    """Runs on every Ray Train worker (or in one process: ``InProcessSession``): restore → epochs of steps →
    report (rank 0: evaluate, log, checkpoint)."""
    spec, cfg = task.spec, task.spec.cfg
    session = session or RayTrainSession()
    rank, world, device = session.rank, session.world, session.device
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed * 1000 + rank)
    model = task.build_model()
    groups = task.param_groups(model)
    optimizer = make_optimizer(cfg.optimizer, groups, cfg.lr, cfg.momentum, cfg.weight_decay)
    with session.last_checkpoint() as checkpoint:
        start_epoch, best, minutes_before, saved_average = restore(checkpoint, model, optimizer)
    configure_groups(optimizer, groups, cfg.weight_decay)
    if start_epoch == 1:
        task.initialise(model)
    model = session.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    # the weights are the same on every worker after each DDP step: rank 0, which scores and saves, keeps the average
    averaged = moving_average(plain, cfg.ema, saved_average) if rank == 0 else None  # on the model's device
    rows = task.rows_per_worker(world)
    # with read-ahead, the first epoch's shards are read while the task prepares (rank 0 loads dev)
    streams = epoch_streams(session.train_shard(), cfg, rows, device, start=start_epoch <= cfg.epochs)
    task.prepare(rank, world)
    logger = MlflowClient(spec.tracking_uri) if rank == 0 else None
    started = time.time()  # learning efficiency: dev scores against the wall-clock minutes of training and scoring

    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        task.begin_epoch(plain, epoch)
        lr = epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        set_lr(optimizer, lr, epoch)
        sums, steps = Counter(), 0
        clock = DataClock(streams.take())
        for batch in clock:
            optimizer.zero_grad(set_to_none=True)
            loss, step_sums = task.step(model, plain, batch)
            loss.backward()
            if cfg.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
            else:
                torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip)
            optimizer.step()
            if averaged is not None:
                averaged.update_parameters(plain)
            sums.update(step_sums)
            steps += 1
        timing = clock.metrics()
        if epoch < cfg.epochs:
            streams.start_next()  # with read-ahead, its first shards are read while rank 0 scores dev
        seconds = timing.pop("seconds")
        train_metrics, train_line = task.train_metrics(sums, steps, seconds, world)
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "steps": steps, "epoch_seconds": seconds,
                                   **train_metrics, **timing}
        state = None
        if rank == 0:
            scored = plain if averaged is None else averaged.module
            with all_cores(cfg.threads, alone=session.evaluates_alone):
                score, dev_metrics, dev_line = task.evaluate(scored)
            # dev_score: what the best epoch (and a tuner) goes by; minutes: since the run began, resumes included
            metrics.update(dev_metrics, dev_score=score, minutes=minutes_before + (time.time() - started) / 60)
            best, state = end_epoch(spec, logger, metrics, score, best, plain, optimizer, scored)
            wait = f"data wait {100 * metrics['data_wait_share']:.1f}% ({metrics['first_batch_wait_s']:.1f} s of it " \
                   "for the first batch)"
            say(f"{task.name} epoch {epoch}/{cfg.epochs}: {train_line}, {dev_line}, {wait}")
        session.report(metrics, state)
