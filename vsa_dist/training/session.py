"""Where the epoch loop runs: a Ray Train worker (one of a DDP group) or one process on its own (a Ray Tune trial
with ``--workers 0``). The loop asks its session for its rank, its device, its train stream, the checkpoint to resume
from, and where to report each epoch; everything else it does the same way in both places."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch

CHECKPOINT = "checkpoint.pt"


@dataclass(frozen=True)
class RunSpec:
    """What every worker of a run gets beside its typed stage config: the feature folder's vocabulary and settings
    (read once, by the driver) and the MLflow run its rank 0 logs to."""

    cfg: Any                          # the stage's config (a TrainConfig), validated and frozen
    vocab: list[str]
    feature_dim: int
    feature_settings: dict[str, Any]
    mlflow_run_id: str
    tracking_uri: str


@dataclass
class Trained:
    """What a finished ``train`` hands back to its stage for testing and registering."""

    model: torch.nn.Module
    state: dict[str, Any]       # the checkpoint's metadata: config, vocab, best (epoch, score), …
    checkpoint: Path            # OUT/best.pt
    manifest: dict[str, Any]    # the feature folder's manifest
    run_id: str                 # MLflow
    last_metrics: dict[str, Any]


def quiet_reports() -> None:
    """Ray Train logs every worker's every report in full ("Reporting training result N: TrainingReport(…)", two
    long lines an epoch per worker) at INFO; the epoch's one line (rank 0) and MLflow already hold all of it. Its
    logger is named by its module's file; where that module is not (another Ray), nothing changes."""
    try:
        from ray.train.v2._internal.execution import context  # lazy: private to Ray; its absence is allowed
    except ImportError:
        return
    logging.getLogger(context.__file__).setLevel(logging.WARNING)


class RayTrainSession:
    """One worker of a Ray Train run: DDP over the group, Ray Train's checkpoints, ``ray.train.report``."""

    evaluates_alone = False  # rank 0 scores dev while the other ranks wait at the report: it may take every core

    def __init__(self) -> None:
        context = ray.train.get_context()
        self.rank, self.world = context.get_world_rank(), context.get_world_size()
        self.device = ray.train.torch.get_device()
        quiet_reports()

    def train_shard(self) -> Any:
        return ray.train.get_dataset_shard("train")

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return ray.train.torch.prepare_model(model)

    @contextmanager
    def last_checkpoint(self) -> Iterator[Path | None]:
        checkpoint = ray.train.get_checkpoint()
        if not checkpoint:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder) / CHECKPOINT

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        """Every rank calls this once per epoch; rank 0 passes the checkpoint state (the others None)."""
        with tempfile.TemporaryDirectory(prefix="vsa-ckpt-") as scratch:  # report copies it to storage
            checkpoint = None
            if state is not None:
                torch.save(state, Path(scratch) / CHECKPOINT)
                checkpoint = ray.train.Checkpoint.from_directory(scratch)
            ray.train.report(metrics, checkpoint=checkpoint)


class InProcessSession:
    """The loop in this process alone (rank 0 of 1): the train stream straight from the Ray Dataset, no DDP and no
    checkpoints (a tuning trial is short and is rerun whole), each epoch's metrics to ``report``."""

    rank, world, evaluates_alone = 0, 1, True  # other trials may share the machine: keep to the configured threads

    def __init__(self, dataset: Any, report: Callable[[dict[str, Any]], None], use_gpu: bool = False):
        self.dataset, self._report = dataset, report
        self.device = torch.device("cuda" if use_gpu and torch.cuda.is_available() else "cpu")

    def train_shard(self) -> Any:
        return self.dataset  # a Dataset iterates like a worker's shard (iter_torch_batches)

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        return model.to(self.device)

    @contextmanager
    def last_checkpoint(self) -> Iterator[Path | None]:
        yield None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self._report(metrics)
