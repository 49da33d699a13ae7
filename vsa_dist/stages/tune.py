"""``vsa tune``: choose a training stage's settings on dev with Ray Tune, as the paper chose its learning rate and
weight decay.

    vsa tune --stage align --features runs/flickr8k/features --trials 8 --epochs 4          # lr, weight decay
    vsa tune --stage align --features F --base train_align_modern --space my_space.yaml --trials 16
    vsa tune --stage align --features F --set batch_size=20,dropout=0.2 --trials 8 --epochs 3     # keys held fixed
    vsa tune --stage mrnn --features F --base train_mrnn_modern --workers 2                 # Ray Train per trial
    vsa tune --stage align --features F --resume                                            # finish a stopped search

Each trial is the stage's own epoch loop (``training.run_epochs`` with the stage's task): with ``--workers 0`` alone in
its Ray Tune process (tiny trials, several at once), with ``--workers N`` a Ray Train DDP run. Every epoch it scores dev
as the stage does (align: R@1+5+10 both ways; mrnn: greedy CIDEr) and reports it; ASHA stops the weaker trials
early. Test is never looked at. Each trial is an MLflow child run of the search's run. The folder ``OUT`` holds Ray
Tune's state, ``trials.json`` (every trial's settings and dev scores) and ``best.yaml``, the best trial's settings as
a preset file: ``vsa train-align --preset OUT/best.yaml --features F``. Trials keep no weights: train the chosen
settings for real with the stage.

The search space is a YAML file of the stage's config keys, each ``{loguniform: [low, high]}``,
``{uniform: [low, high]}``, ``{randint: [low, high]}`` (high excluded) or ``{choice: [a, b, …]}``; without one, the
learning rate within ten times either side of the base's and the weight decay in [1e-6, 1e-2], log-uniform.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import ray
import ray.tune
import yaml
from mlflow.entities import Param
from mlflow.tracking import MlflowClient
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from vsa_dist import config as cfglib
from vsa_dist.io import atomic_write_bytes, atomic_write_json, claim_output_folder
from vsa_dist.ray_env import check_placeable, ensure_ray, worker_request
from vsa_dist.recipes.align import AlignTask
from vsa_dist.recipes.config import TuneConfig
from vsa_dist.recipes.mrnn import MRNNTask
from vsa_dist.stages import run_stage
from vsa_dist.tracking import check_tracking_store, use_experiment
from vsa_dist.training.loop import run_epochs
from vsa_dist.training.run import fit, open_record
from vsa_dist.training.session import InProcessSession, RunSpec
from vsa_dist.training.streams import stream_settings, train_dataset

# stage → its recipe: the same config, stream and epoch loop the stage itself runs
STAGES = {"align": AlignTask, "mrnn": MRNNTask}
KINDS = ("loguniform", "uniform", "randint", "choice")
# what the search itself sets in every trial: not part of a search space
SET_BY_TUNE = ("features", "out", "epochs", "workers", "threads", "seed", "resume", "test", "register_as",
               "experiment", "progress", "max_failures")
METRIC = "dev_score"  # what each stage picks its best epoch by; the loop reports it every epoch


def fixed_values(cfg: TuneConfig) -> dict[str, Any]:
    """Every trial's config before its sampled settings: the stage's defaults, its base preset (the stage's own
    preset when none is given: a search with no base tunes what the stage trains), what tune sets."""
    task = STAGES[cfg.stage]
    held = {}
    for item in cfg.set:
        key, equals, value = item.partition("=")
        if not equals or not key.strip():
            raise cfglib.ConfigError(f"set {item!r}: expected KEY=VALUE")
        held[key.strip()] = value.strip()
    base = cfglib.layered(task.config, cfg.base or task.config.PRESET, held, "--set")
    if fixed_by_tune := sorted(set(held) & set(SET_BY_TUNE)):
        raise cfglib.ConfigError(f"set {fixed_by_tune}: set by vsa tune itself (use its own flags)")
    return {**base, "features": cfg.features, "epochs": cfg.epochs, "workers": max(cfg.workers, 1),
            "threads": cfg.threads, "seed": cfg.seed, "resume": False, "test": False, "register_as": "",
            "progress": False, "max_failures": 0, "out": ""}


def read_space(cfg: TuneConfig, fixed: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    """The search space as ``{key: {kind: values}}``, from ``--space`` or the default (lr and weight decay)."""
    if not cfg.space:
        return {"lr": {"loguniform": [fixed["lr"] / 10, fixed["lr"] * 10]},
                "weight_decay": {"loguniform": [1e-6, 1e-2]}}
    path = Path(cfg.space)
    if not path.is_file():
        raise cfglib.ConfigError(f"space {cfg.space}: no such file")
    return cfglib.read_yaml(path.read_text(encoding="utf-8-sig"), cfg.space)


def search_space(cfg: TuneConfig) -> dict[str, tuple[str, list[Any]]]:
    """The search space as ``{key: (kind, values)}``, each key and each end of its range checked by resolving (and
    validating) the stage's config with it: a bad space fails here, not in the eighth trial. One train stream serves
    every trial: a key that would change what it carries (the recipe's ``stream``) belongs in --base."""
    task = STAGES[cfg.stage]
    fixed = fixed_values(cfg)
    base_stream = task.stream(cfglib.resolve(task.config, None, fixed))
    space: dict[str, tuple[str, list[Any]]] = {}
    for key, spec in read_space(cfg, fixed).items():
        where = f"space {cfg.space or '(default)'}: {key}"
        if key not in fixed:
            raise cfglib.ConfigError(f"{where}: not a config key of {cfg.stage} (known: {sorted(fixed)})")
        if key in SET_BY_TUNE:
            raise cfglib.ConfigError(f"{where}: set by vsa tune itself, not searched")
        if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in KINDS:
            raise cfglib.ConfigError(f"{where}: expected one of {{{' | '.join(KINDS)}: [...]}}, got {spec!r}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values or (kind != "choice" and len(values) != 2):
            wanted = "a list of values" if kind == "choice" else "[low, high]"
            raise cfglib.ConfigError(f"{where}: {kind} needs {wanted}")
        if kind != "choice" and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise cfglib.ConfigError(f"{where}: {kind} needs numbers, got {values!r}")
        if kind != "choice" and not values[0] < values[1]:
            raise cfglib.ConfigError(f"{where}: low {values[0]} is not below high {values[1]}")
        if kind == "loguniform" and values[0] <= 0:
            raise cfglib.ConfigError(f"{where}: loguniform needs low > 0")
        ends = values if kind != "randint" else [values[0], values[1] - 1]
        for value in ends:
            try:
                trial = cfglib.resolve(task.config, None, {**fixed, key: value}, source=where)
            except cfglib.ConfigError as err:
                raise cfglib.ConfigError(f"{where} = {value!r}: {err}") from err
            if task.stream(trial) != base_stream:
                raise cfglib.ConfigError(f"{where}: decides the train stream all trials share; set it in --base")
        space[key] = (kind, values)
    return space


def sample_trials(space: dict[str, tuple[str, list[Any]]], trials: int, seed: int) -> list[dict[str, Any]]:
    """``trials`` settings drawn from ``space`` (a seeded random search), as plain JSON values: the search records
    them before it starts, so that ``--resume`` runs the same trials."""
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(trials):
        point: dict[str, Any] = {}
        for key, (kind, values) in space.items():
            if kind == "loguniform":
                point[key] = float(np.exp(rng.uniform(np.log(values[0]), np.log(values[1]))))
            elif kind == "uniform":
                point[key] = float(rng.uniform(values[0], values[1]))
            elif kind == "randint":
                point[key] = int(rng.integers(values[0], values[1]))
            else:
                point[key] = values[int(rng.integers(len(values)))]
        draws.append(point)
    return draws


class EpochRecord:
    """A trial's epochs as it reports them, in ``OUT/trials/INDEX.json`` (written atomically each epoch): what the
    trial table and ``--resume`` read, never Ray Tune's own (pickled) state."""

    def __init__(self, path: Path, params: dict[str, Any], run_id: str):
        self.path, self.data = path, {"params": params, "run_id": run_id, "epochs": [], "finished": False}

    def add(self, metrics: dict[str, Any]) -> None:
        keep = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.data["epochs"].append(keep)
        atomic_write_json(self.path, self.data)

    @staticmethod
    def mark_finished(path: Path, data: dict[str, Any], error: str = "") -> None:
        """The trial ended: at its last epoch, stopped by ASHA (a normal end too), or with ``error``."""
        atomic_write_json(path, {**data, "finished": True, **({"error": error} if error else {})})

    @staticmethod
    def read(path: Path) -> dict[str, Any] | None:
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None


def run_trial(params: dict[str, Any], *, draws: list[dict[str, Any]], stage: str, fixed: dict[str, Any],
              in_process: bool, vocab: list[str], settings: dict[str, Any], dataset: Any, parent_run_id: str,
              experiment_id: str, tracking_uri: str, out: str) -> None:
    """Trial ``params["trial"]``, in its Ray Tune process: the stage's config with that draw's settings, an MLflow child
    run, and the stage's own epoch loop, alone here (``workers`` 0) or as a Ray Train run reporting to Tune."""
    task = STAGES[stage]
    index = params["trial"]
    point = draws[index]
    trial_dir = Path(out) / "trials"
    cfg = cfglib.resolve(task.config, None, {**fixed, **point, "out": str(trial_dir / f"{index:03d}")})
    client = MlflowClient(tracking_uri)
    run_id = client.create_run(experiment_id, run_name=f"trial-{index:03d}", tags={
        "mlflow.parentRunId": parent_run_id, "vsa.tune_trial": str(index)}).info.run_id
    client.log_batch(run_id, params=[Param(k, str(v)[:6000]) for k, v in cfglib.to_dict(cfg).items()])
    record = EpochRecord(trial_dir / f"{index:03d}.json", point, run_id)
    spec = RunSpec(cfg, vocab, settings["feature_dim"], settings, run_id, tracking_uri)
    if in_process:
        def report(metrics: dict[str, Any]) -> None:
            record.add(metrics)
            ray.tune.report(metrics)

        run_epochs(task(spec), InProcessSession(dataset, report, cfg.use_gpu))
    else:
        fit(task, spec, f"trial-{index:03d}", {"train": dataset}, callbacks=(_recording_callback(record),))
    EpochRecord.mark_finished(record.path, record.data)
    client.set_terminated(run_id, "FINISHED")


def _recording_callback(record: EpochRecord) -> Any:
    """Ray Train → Ray Tune: rank 0's metrics each epoch to Tune (for ASHA) and to the trial's record."""
    class RecordingTuneReport(TuneReportCallback):
        def after_report(self, run_context, metrics, checkpoint) -> None:
            record.add(metrics[0])
            super().after_report(run_context, metrics, checkpoint)

    return RecordingTuneReport()


def trial_table(out: Path, count: int) -> list[dict[str, Any]]:
    """Every trial from its record: its settings, epochs run, best dev score and epoch, minutes, MLflow run; best
    first."""
    rows = []
    for index in range(count):
        record = EpochRecord.read(out / "trials" / f"{index:03d}.json")
        if not record or not record["epochs"]:
            rows.append({"trial": index, "params": record["params"] if record else None, "epochs": 0,
                         "finished": False})
            continue
        epochs = record["epochs"]
        best = max(epochs, key=lambda e: e[METRIC])
        rows.append({"trial": index, "params": record["params"], "epochs": len(epochs),
                     "best_dev_score": best[METRIC], "best_epoch": int(best["epoch"]),
                     "last_dev_score": epochs[-1][METRIC],
                     "minutes": round(epochs[-1]["minutes"], 2),
                     "finished": record["finished"], "run_id": record["run_id"]})
    return sorted(rows, key=lambda row: -row.get("best_dev_score", float("-inf")))


def best_preset(cfg: TuneConfig, best: dict[str, Any], fixed: dict[str, Any]) -> str:
    """The best trial's settings as a preset file: the base preset's keys and the tuned ones."""
    task = STAGES[cfg.stage]
    defaults = cfglib.layered(task.config, None, {})
    keys = {k: v for k, v in fixed.items() if k not in SET_BY_TUNE and v != defaults[k]}
    keys.update(best["params"])
    header = (f"# vsa tune --stage {cfg.stage} (base: {cfg.base or task.config.PRESET}), "
              f"{time.strftime('%Y-%m-%d')}: the best of {cfg.trials} trials on dev\n"
              f"# ({METRIC} {best['best_dev_score']:.4g} at epoch {best['best_epoch']} of at most {cfg.epochs}; "
              f"MLflow run {best.get('run_id', '')}).\n"
              f"# Use: vsa {task.name} --preset {Path(cfg.out) / 'best.yaml'} --features FEATURES [--epochs N]\n")
    return header + yaml.safe_dump(keys, sort_keys=True)


def run(cfg: TuneConfig) -> dict[str, Any]:
    space, fixed = search_space(cfg), fixed_values(cfg)
    task = STAGES[cfg.stage]
    base = cfglib.resolve(task.config, None, fixed)
    base.check_inputs()  # as the stage checks its inputs
    task.check_checkpoints(base)
    out = claim_output_folder(Path(cfg.out), "tune")
    # the stream the stage itself would read, one for every trial (search_space keeps it so)
    stream = task.stream(base)
    manifest, settings = stream_settings(cfg.features, stream)
    vocab = manifest["vocab"]["words"]
    check_tracking_store()
    ensure_ray(cfg.progress)
    check_placeable(worker_request(fixed["use_gpu"], cfg.threads), max(cfg.workers, 1),
                    f"tune --workers {cfg.workers}")

    # The search's record: its MLflow run and every trial's draw, fixed before the first trial, so that --resume
    # runs the same trials (those without a finished record); Ray Tune's own state is a pickle we never load.
    experiment_id = use_experiment(cfg.experiment)

    def start() -> dict[str, Any]:
        name = f"tune-{cfg.stage}-{time.strftime('%Y%m%d-%H%M%S')}"
        parent = mlflow.start_run(experiment_id=experiment_id, run_name=name)
        record = {"name": name, "mlflow_run_id": parent.info.run_id, "config": cfglib.to_dict(cfg),
                  "space": {k: {kind: values} for k, (kind, values) in space.items()},
                  "draws": sample_trials(space, cfg.trials, cfg.seed)}
        mlflow.log_params(cfglib.to_dict(cfg))
        mlflow.log_dict({**record, "fixed": fixed}, "tune.json")
        return record

    # a search is started without --resume: its record holds resume false
    record = open_record(out / "tune.json", cfg.resume, "search", {"config": {**cfglib.to_dict(cfg), "resume": False}},
                         start)
    draws = record["draws"]
    todo = [i for i in range(len(draws))
            if not (EpochRecord.read(out / "trials" / f"{i:03d}.json") or {}).get("finished")]
    print(f"tune: {len(todo)} of {len(draws)} trials of {cfg.stage} to run on {cfg.features}, at most {cfg.epochs} "
          f"epochs each; MLflow run {record['mlflow_run_id']} ({mlflow.get_tracking_uri()}); in {out}", flush=True)

    if todo:
        dataset = train_dataset(cfg.features, vocab, stream, cfg.seed)
        trainable = ray.tune.with_parameters(
            run_trial, draws=draws, stage=cfg.stage, fixed=fixed, in_process=cfg.workers == 0, vocab=vocab,
            settings=settings, dataset=dataset, parent_run_id=record["mlflow_run_id"], experiment_id=experiment_id,
            tracking_uri=mlflow.get_tracking_uri(), out=str(out))
        # a trial alone holds its threads; one that drives a Ray Train run next to nothing (its workers ask for theirs)
        alone = cfg.workers == 0
        trainable = ray.tune.with_resources(trainable, {"cpu": float(cfg.threads) if alone else 0.01,
                                                        "gpu": 1.0 if fixed["use_gpu"] and alone else 0.0})
        cpus = int(ray.cluster_resources().get("CPU", 1))
        concurrent = cfg.concurrent or max(1, cpus // (cfg.threads * max(cfg.workers, 1)))
        tuner = ray.tune.Tuner(
            trainable, param_space={"trial": ray.tune.grid_search(todo)},
            tune_config=ray.tune.TuneConfig(
                metric=METRIC, mode="max", max_concurrent_trials=concurrent,
                scheduler=ASHAScheduler(time_attr="training_iteration", max_t=cfg.epochs,
                                        grace_period=cfg.grace_epochs, reduction_factor=cfg.reduction_factor)),
            run_config=ray.tune.RunConfig(name=f"{record['name']}-{len(draws) - len(todo)}", storage_path=str(out),
                                          verbose=1 if cfg.progress else 0),
        )
        for result in tuner.fit():
            index = result.config["trial"]
            path = out / "trials" / f"{index:03d}.json"
            trial = EpochRecord.read(path)
            if trial is not None:  # ASHA's stop is a trial's normal end; an error is recorded as such
                EpochRecord.mark_finished(path, trial, str(result.error).splitlines()[0] if result.error else "")
        close_trial_runs(experiment_id, record["mlflow_run_id"])

    rows = trial_table(out, len(draws))
    finished = [row for row in rows if "best_dev_score" in row]
    if not finished:
        mlflow.end_run("FAILED")
        raise RuntimeError(f"tune: no trial reported an epoch; see the trial logs under {out}")
    best = finished[0]
    atomic_write_bytes(out / "best.yaml", best_preset(cfg, best, fixed).encode())
    stopped = sum(row["epochs"] < cfg.epochs for row in finished)
    summary = {"stage": cfg.stage, "metric": METRIC, "best": best, "trials": rows, "best_yaml": str(out / "best.yaml"),
               "mlflow_run_id": record["mlflow_run_id"], "stopped_early": stopped,
               "stream": dataclasses.asdict(stream)}  # what every trial read: the stage's own train stream
    atomic_write_json(out / "trials.json", summary)
    mlflow.log_metrics({"best_dev_score": best["best_dev_score"], "trials_finished": len(finished),
                        "trials_stopped_early": stopped})
    mlflow.log_artifact(str(out / "best.yaml"))
    mlflow.log_artifact(str(out / "trials.json"))
    mlflow.end_run()
    print(f"tune: best of {len(finished)} trials: {METRIC} {best['best_dev_score']:.4g} at epoch {best['best_epoch']} "
          f"({best['minutes']:.1f} min) with {json.dumps(best['params'])}; {stopped} stopped early by ASHA\n"
          f"  preset: {out / 'best.yaml'}; every trial: {out / 'trials.json'}", flush=True)
    return summary


def close_trial_runs(experiment_id: str, parent_run_id: str) -> None:
    """A trial ASHA stopped never reached its own end: its MLflow child run is closed here (FINISHED, tagged as
    stopped early), not left RUNNING."""
    client = MlflowClient()
    for run in client.search_runs([experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}' "
                                                                  "and attributes.status = 'RUNNING'"):
        client.set_tag(run.info.run_id, "vsa.stopped_early", "true")
        client.set_terminated(run.info.run_id, "FINISHED")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(TuneConfig, run, argv, prog="vsa tune", preset=None)
