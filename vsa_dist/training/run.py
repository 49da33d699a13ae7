"""The Ray side of a training stage: the driver (MLflow run, run.json, Ray Train's trainer, best.pt) and what a
worker sets up. A stage's run folder holds ``run.json`` (the Ray Train run name, the MLflow run id, the feature
settings), Ray Train's storage under ``ray/`` (per-epoch checkpoints) and, at the end, ``best.pt``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.io import atomic_write_json
from vsa_dist.training.session import RunSpec
from vsa_dist.training.state import save_best
from vsa_dist.training.streams import train_dataset


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
    import sys

    from vsa_dist.console import SAY_MARK

    print(SAY_MARK + message, file=sys.__stdout__, flush=True)


def start_run(cfg: Any, out: Path, settings: dict[str, Any], prefix: str,
              manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the MLflow run (described, tagged with the code's commit, the feature folder and its shards as dataset
    inputs) and write ``run.json``, or with ``cfg.resume`` reopen the recorded ones."""
    import mlflow

    from vsa_dist.tracking import log_data_inputs, source_tags, use_experiment

    record_path = out / "run.json"
    record = json.loads(record_path.read_text()) if cfg.resume and record_path.is_file() else None
    if cfg.resume and record is None:
        raise cfglib.ConfigError(f"--resume: no earlier run recorded in {record_path}")
    if record and record["feature_settings"] != settings:
        raise cfglib.ConfigError("--resume: the features differ from those the run started with")
    experiment_id = use_experiment(cfg.experiment)
    if record is None:
        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=source_tags(),
                               description=f"vsa train-{prefix}: {cfg.epochs} epochs on {cfg.features}, "
                                           f"{cfg.workers} worker(s); config.json has every setting")
        mlflow.log_params(cfglib.to_dict(cfg))
        if manifest is not None:
            log_data_inputs(cfg.features, manifest)
        mlflow.log_dict({"config": cfglib.to_dict(cfg), "feature_settings": settings}, "config.json")
        record = {"name": name, "mlflow_run_id": run.info.run_id, "feature_settings": settings}
        atomic_write_json(record_path, record)
    else:
        mlflow.start_run(run_id=record["mlflow_run_id"])
    return record


def fit(train_loop: Callable[[dict[str, Any]], None], spec: RunSpec, name: str, datasets: dict[str, Any],
        callbacks: tuple[Any, ...] = ()):
    """Ray Train DDP over ``cfg.workers`` workers; the same run name and storage resume a stopped run.

    Ray Train keeps its checkpoints under OUT/ray itself, a URI included (every worker node writes there)."""
    import ray.train
    from ray.train.torch import TorchTrainer

    from vsa_dist.ray_env import worker_request

    cfg = spec.cfg
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"spec": spec},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=worker_request(cfg.use_gpu, cfg.threads)),
        run_config=ray.train.RunConfig(
            name=name, storage_path=ray_storage(cfg.out),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures), callbacks=list(callbacks)),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {name} reported no checkpoint")
    return result


def ray_storage(out: str) -> str:
    return storage.join(out, "ray") if storage.is_remote(out) else str(Path(out).resolve() / "ray")


@dataclass
class Trained:
    """What a finished ``train`` hands back to its stage for testing and registering."""

    model: torch.nn.Module
    state: dict[str, Any]       # the checkpoint's metadata: config, vocab, best (epoch, score), …
    checkpoint: Path            # OUT/best.pt
    manifest: dict[str, Any]    # the feature folder's manifest
    run_id: str                 # MLflow
    last_metrics: dict[str, Any]


def train(
    cfg: Any,
    stage: str,
    train_loop: Callable[[dict[str, Any]], None],
    load_model: Callable[[Path], tuple[torch.nn.Module, dict[str, Any]]],
    whole_image_only: bool = False,
) -> Trained:
    """A training stage's driver up to the best model: resolve paths, start or reopen the MLflow run, fit with
    Ray Train over the train feature shards, write ``best.pt``. The MLflow run stays open for the stage."""
    import mlflow

    from vsa_dist.data.shards import load_manifest
    from vsa_dist.features.format import check_same_settings, load_features_manifest
    from vsa_dist.ray_env import check_placeable, ensure_ray, worker_request
    from vsa_dist.tracking import check_tracking_store

    # Ray Train writes OUT/ray itself; run.json and best.pt are written here, then published to OUT.
    out = storage.mirror(cfg.out, skip=("ray",)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    manifest = load_features_manifest(cfg.features)
    snippets = getattr(cfg, "snippets", "")
    settings = check_same_settings(
        {cfg.features: manifest, **({snippets: load_manifest(snippets)} if snippets else {})}
    )
    vocab = manifest["vocab"]["words"]
    check_tracking_store()  # an unreachable MLflow server fails here in seconds, not after Ray has started
    ensure_ray(cfg.progress)
    check_placeable(worker_request(cfg.use_gpu, cfg.threads), cfg.workers, f"{stage} --workers {cfg.workers}")
    record = start_run(cfg, out, settings, prefix=stage.removeprefix("train-"), manifest=manifest)
    print(f"{stage}: MLflow run {record['mlflow_run_id']} ({mlflow.get_tracking_uri()}), Ray Train run "
          f"{record['name']} in {cfg.out}", flush=True)
    spec = RunSpec(cfg, vocab, settings["feature_dim"], settings, record["mlflow_run_id"], mlflow.get_tracking_uri())
    dataset = train_dataset(cfg.features, vocab, cfg.max_words, whole_image_only, snippets, cfg.seed,
                            getattr(cfg, "snippet_phrases", True), getattr(cfg, "augment", []))
    result = fit(train_loop, spec, record["name"], {"train": dataset})
    model, state, final = save_best(result, out, load_model)
    return Trained(model, state, final, manifest, record["mlflow_run_id"], dict(getattr(result, "metrics", None) or {}))


def metric_by_epoch(run_id: str, name: str) -> dict[int, float]:
    """One metric of an MLflow run, as it logged it each epoch (its step)."""
    from mlflow.tracking import MlflowClient

    return {m.step: m.value for m in MlflowClient().get_metric_history(run_id, name)}


def dev_curve(run_id: str) -> list[dict[str, float]]:
    """Learning efficiency: the run's dev score (what its best epoch is chosen by) against the wall-clock minutes of
    training and scoring since it began, one point per epoch, as its MLflow run logged them."""
    minutes, scores = metric_by_epoch(run_id, "minutes"), metric_by_epoch(run_id, "dev_score")
    return [{"epoch": step, "minutes": round(minutes[step], 2), "dev_score": round(scores[step], 4)}
            for step in sorted(set(minutes) & set(scores))]


def first_reached(run_id: str, flag: str) -> dict[str, float] | None:
    """The first epoch at which the run logged ``flag`` as 1 (e.g. dev beat a published row), with the wall-clock
    minutes since the run began; None if it never did."""
    minutes = metric_by_epoch(run_id, "minutes")
    reached = sorted(step for step, value in metric_by_epoch(run_id, flag).items() if value >= 1 and step in minutes)
    return {"epoch": reached[0], "minutes": round(minutes[reached[0]], 2)} if reached else None


def finish(cfg: Any, stage: str, trained: Trained, summary: dict[str, Any]) -> dict[str, Any]:
    """End a training stage: the summary to MLflow and beside ``best.pt``, the MLflow run closed, and the run
    folder published when OUT is a storage URI."""
    import mlflow

    summary["dev_curve"] = dev_curve(trained.run_id)
    if summary["dev_curve"]:
        summary["train_minutes"] = summary["dev_curve"][-1]["minutes"]
    mlflow.log_dict(summary, "summary.json")
    mlflow.end_run()
    atomic_write_json(trained.checkpoint.parent / "summary.json", summary)
    storage.publish(trained.checkpoint.parent, cfg.out, skip=("ray",))
    print(f"{stage}: done; MLflow run id {trained.run_id}; outputs in {cfg.out}", flush=True)
    return summary
