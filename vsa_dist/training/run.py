"""The Ray side of a training stage: the driver (MLflow run, run.json, Ray Train's trainer, best.pt, the ending) and
what a worker runs. A stage's run folder holds ``run.json`` (the Ray Train run name, the MLflow run id, the feature
settings), Ray Train's storage under ``ray/`` (per-epoch checkpoints) and, at the end, ``best.pt``.

A stage is a task class (``vsa_dist/recipes/``): ``run_recipe(task, cfg)`` reads its train stream, fits its epoch loop
on every worker (``training/loop.py``), writes its best model, and hands that to the task's own ending (test,
register)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mlflow
import ray.train
from mlflow.tracking import MlflowClient
from ray.train.torch import TorchTrainer

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.io import atomic_write_json
from vsa_dist.ray_env import check_placeable, ensure_ray, worker_request
from vsa_dist.tracking import check_tracking_store, log_data_inputs, source_tags, use_experiment
from vsa_dist.training.loop import Task, run_epochs
from vsa_dist.training.session import RunSpec, Trained
from vsa_dist.training.state import save_best
from vsa_dist.training.streams import stream_settings, train_dataset


def open_record(path: Path, resume: bool, what: str, same: dict[str, Any], start: Callable[[], dict[str, Any]]
                ) -> dict[str, Any]:
    """The record of a run that ``--resume`` goes on with (``run.json`` of a training stage, ``tune.json`` of a
    search): with ``resume``, the one at ``path``, its MLflow run reopened, refused in one line when there is none or
    when its ``same`` keys differ from the values given; else a new one from ``start()`` (which starts the MLflow
    run), written atomically before any work."""
    record = json.loads(path.read_text()) if resume and path.is_file() else None
    if resume and record is None:
        raise cfglib.ConfigError(f"--resume: no earlier {what} recorded in {path}")
    if record is None:
        record = start()
        atomic_write_json(path, record)
        return record
    if differ := [key for key, value in same.items() if record.get(key) != value]:
        raise cfglib.ConfigError(f"--resume: {' and '.join(differ)} not the same as when the {what} started "
                                 f"({path})")
    mlflow.start_run(run_id=record["mlflow_run_id"])
    return record


def start_run(cfg: Any, out: Path, settings: dict[str, Any], prefix: str,
              manifest: dict[str, Any] | None = None) -> dict[str, Any]:
    """Start the MLflow run (described, tagged with the code's commit, the feature folder and its shards as dataset
    inputs) and write ``run.json``, or with ``cfg.resume`` reopen the recorded ones."""
    experiment_id = use_experiment(cfg.experiment)

    def start() -> dict[str, Any]:
        name = f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
        run = mlflow.start_run(experiment_id=experiment_id, run_name=name, tags=source_tags(),
                               description=f"vsa train-{prefix}: {cfg.epochs} epochs on {cfg.features}, "
                                           f"{cfg.workers} worker(s); config.json has every setting")
        mlflow.log_params(cfglib.to_dict(cfg))
        if manifest is not None:
            log_data_inputs(cfg.features, manifest)
        mlflow.log_dict({"config": cfglib.to_dict(cfg), "feature_settings": settings}, "config.json")
        return {"name": name, "mlflow_run_id": run.info.run_id, "feature_settings": settings}

    return open_record(out / "run.json", cfg.resume, "run", {"feature_settings": settings}, start)


def worker_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: the task's epoch loop."""
    run_epochs(loop_config["task"](loop_config["spec"]))


def fit(task: type[Task], spec: RunSpec, name: str, datasets: dict[str, Any], callbacks: tuple[Any, ...] = ()):
    """Ray Train DDP over ``cfg.workers`` workers, each running ``task``'s epoch loop; the same run name and storage
    resume a stopped run.

    Ray Train keeps its checkpoints under OUT/ray itself, a URI included (every worker node writes there)."""
    cfg = spec.cfg
    trainer = TorchTrainer(
        worker_loop,
        train_loop_config={"task": task, "spec": spec},
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


def train(task: type[Task], cfg: Any) -> Trained:
    """A training stage's driver up to the best model: resolve paths, start or reopen the MLflow run, fit ``task``'s
    loop with Ray Train over the train stream it asks for, write ``best.pt``. The MLflow run stays open for the
    stage's ending."""
    # Ray Train writes OUT/ray itself; run.json and best.pt are written here, then published to OUT.
    out = storage.mirror(cfg.out, skip=("ray",)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    stream = task.stream(cfg)
    manifest, settings = stream_settings(cfg.features, stream)
    vocab = manifest["vocab"]["words"]
    check_tracking_store()  # an unreachable MLflow server fails here in seconds, not after Ray has started
    ensure_ray(cfg.progress)
    check_placeable(worker_request(cfg.use_gpu, cfg.threads), cfg.workers, f"{task.name} --workers {cfg.workers}")
    record = start_run(cfg, out, settings, prefix=task.name.removeprefix("train-"), manifest=manifest)
    print(f"{task.name}: MLflow run {record['mlflow_run_id']} ({mlflow.get_tracking_uri()}), Ray Train run "
          f"{record['name']} in {cfg.out}", flush=True)
    spec = RunSpec(cfg, vocab, settings["feature_dim"], settings, record["mlflow_run_id"], mlflow.get_tracking_uri())
    result = fit(task, spec, record["name"], {"train": train_dataset(cfg.features, vocab, stream, cfg.seed)})
    model, state, final = save_best(result, out, task.load_best)
    return Trained(model, state, final, manifest, record["mlflow_run_id"], dict(getattr(result, "metrics", None) or {}))


def run_recipe(task: type[Task], cfg: Any) -> dict[str, Any]:
    """A training stage from its checked config to its summary: train, then the task's ending (test once, register),
    then ``finish``."""
    task.check_checkpoints(cfg)
    trained = train(task, cfg)
    return finish(cfg, task.name, trained, task.conclude(cfg, trained))


def metric_by_epoch(run_id: str, name: str) -> dict[int, float]:
    """One metric of an MLflow run, as it logged it each epoch (its step)."""
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
    summary["dev_curve"] = dev_curve(trained.run_id)
    if summary["dev_curve"]:
        summary["train_minutes"] = summary["dev_curve"][-1]["minutes"]
    mlflow.log_dict(summary, "summary.json")
    mlflow.end_run()
    atomic_write_json(trained.checkpoint.parent / "summary.json", summary)
    storage.publish(trained.checkpoint.parent, cfg.out, skip=("ray",))
    print(f"{stage}: done; MLflow run id {trained.run_id}; outputs in {cfg.out}", flush=True)
    return summary
