"""What every Ray Train stage shares: the run record and MLflow run, the trainer, checkpoints, the best
model, learning-rate schedules. The stages keep their own train loops (read top to bottom there).

A stage's run folder holds ``run.json`` (the Ray Train run name, the MLflow run id, the feature
settings), Ray Train's storage under ``ray/`` (per-epoch checkpoints) and, at the end, ``best.pt``.
"""

from __future__ import annotations

import functools
import io
import json
import math
import os
import queue
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.io import atomic_write_bytes, atomic_write_json

CHECKPOINT = "checkpoint.pt"


@dataclass
class TrainConfig:
    """What every Ray Train stage's config has; a stage's own dataclass adds its model and may change defaults."""

    features: str = field(default="", metadata={"help": "feature folder (vsa features --out)"})
    out: str = field(default="", metadata={"help": "run folder: checkpoints, run.json, best.pt; default beside FEATURES"})
    epochs: int = field(default=20, metadata={"help": "passes over the train images", "range": "[1, inf)"})
    batch_size: int = field(default=100, metadata={"help": "image-sentence pairs per step, over all workers (paper: 100)", "range": "[1, inf)"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd (with momentum), adam or rmsprop"})
    lr: float = field(default=1e-4, metadata={"help": "learning rate (chosen on dev)", "range": "(0, inf)"})
    lr_schedule: str = field(default="constant", metadata={"help": "constant, or cosine: decay to 0 over the planned epochs"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum", "range": "[0, 1)"})
    weight_decay: float = field(default=0.0, metadata={"help": "L2 weight decay (chosen on dev)", "range": "[0, inf)"})
    clip: float = field(default=5.0, metadata={"help": "element-wise gradient clipping (paper: 5)", "range": "(0, inf)"})
    dropout: float = field(default=0.5, metadata={"help": "dropout on the non-recurrent layers", "range": "[0, 1)"})
    max_words: int = field(default=32, metadata={"help": "longer sentences are cut", "range": "[1, inf)"})
    workers: int = field(default=2, metadata={"help": "Ray Train workers (DDP)", "range": "[1, inf)"})
    use_gpu: bool = field(default=False, metadata={"help": "one GPU per worker"})
    threads: int = field(default=1, metadata={"help": "torch threads per CPU worker", "range": "[1, inf)"})
    shuffle_buffer: int = field(default=1000, metadata={"help": "images in each worker's local shuffle buffer", "range": "[0, inf)"})
    prefetch_batches: int = field(default=4, metadata={"help": "batches each worker prepares ahead (hides data wait)", "range": "[1, inf)"})
    read_ahead: str = field(default="true", metadata={"help": "start each epoch's stream while rank 0 scores dev: true, false, or auto (with GPUs only); docs/alignment.md measures it"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    resume: bool = field(default=False, metadata={"help": "continue the run recorded in OUT/run.json from its last checkpoint"})
    max_failures: int = field(default=2, metadata={"help": "worker-group restarts from the last checkpoint after a failure", "range": "[0, 100]"})
    experiment: str = field(default="", metadata={"help": "MLflow experiment"})
    register_as: str = field(default="", metadata={"help": "registered model name; empty: do not register"})
    test: bool = field(default=True, metadata={"help": "evaluate the best-on-dev model on test once at the end"})
    progress: bool = field(default=True, metadata={"help": "progress output"})

    def validate_training(self, default_out: str, min_batch: int) -> None:
        check_features(self.features, need_test=self.test)
        if not self.out:
            self.out = str(Path(self.features).parent / default_out)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        check_choice("lr_schedule", self.lr_schedule, LR_SCHEDULES)
        check_choice("read_ahead", self.read_ahead, ("auto", "true", "false"))
        if self.batch_size < min_batch * self.workers:
            raise cfglib.ConfigError(f"need at least {min_batch} pairs per worker in a batch")


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


def worker_setup(cfg: Any) -> tuple[int, int, torch.device]:
    """Inside a train loop: this worker's rank, the number of workers and its device; threads and seed set."""
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed * 1000 + rank)
    return rank, world, ray.train.torch.get_device()


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


class DataClock:
    """Wraps an epoch's batch iterator and times what the step loop spends waiting on it: in all, and for the
    first batch alone (the stream's start-up each epoch, which a steady shortfall of the reader does not explain)."""

    def __init__(self, batches: Iterable[Any]):
        self.batches, self.wait, self.first_wait, self.start = batches, 0.0, 0.0, time.time()

    def __iter__(self) -> Iterator[Any]:
        asked, first = time.time(), True
        for batch in self.batches:
            waited = time.time() - asked
            self.wait += waited
            if first:
                self.first_wait, first = waited, False
            yield batch
            asked = time.time()

    def metrics(self) -> dict[str, float]:
        seconds = time.time() - self.start
        return {"seconds": seconds, "data_wait_share": self.wait / seconds, "first_batch_wait_s": self.first_wait}


class EpochStreams:
    """A worker's batches, epoch after epoch; with ``read_ahead``, each epoch's stream starts before the previous
    epoch's dev evaluation.

    Ray Data begins an epoch's execution only when every worker asks for its first batch, and its first shards'
    read took 4-15 s per epoch on full Flickr8k (docs/alignment.md) while the steps stood still. With
    ``read_ahead``, ``start_next`` asks for the next epoch's first batches from a thread as soon as an epoch's steps
    end, so that read runs while rank 0 scores dev and the ranks meet at the report. On CPUs the read then competes
    with the evaluation for the cores: a loss while the read was expensive, no longer since it costs about 6 s
    of a core per epoch. ``make`` builds one epoch's iterable."""

    def __init__(self, make: Callable[[], Iterable[Any]], depth: int, read_ahead: bool = True):
        self.make, self.depth, self.read_ahead, self.upcoming = make, max(1, depth), read_ahead, None

    def start_next(self) -> None:
        """Start the next epoch's stream now (nothing without ``read_ahead``: it starts at ``take``)."""
        if self.read_ahead and self.upcoming is None:
            self.upcoming = _ReadAhead(self.make(), self.depth)

    def take(self) -> Iterable[Any]:
        """This epoch's batches: the stream started early, or one started now."""
        stream, self.upcoming = self.upcoming, None
        return stream if stream is not None else self.make()


class _ReadAhead:
    """Iterates ``batches`` in a daemon thread from the moment it is made, up to ``depth`` items ahead."""

    _END = object()

    def __init__(self, batches: Iterable[Any], depth: int):
        self.items: queue.Queue = queue.Queue(maxsize=depth)
        threading.Thread(target=self._fill, args=(batches,), daemon=True, name="vsa-read-ahead").start()

    def _fill(self, batches: Iterable[Any]) -> None:
        try:
            for batch in batches:
                self.items.put(batch)
            self.items.put(self._END)
        except BaseException as error:  # re-raised in the training thread, which would otherwise wait forever
            self.items.put(error)

    def __iter__(self) -> Iterator[Any]:
        while (item := self.items.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


def epoch_streams(shard: Any, cfg: Any, batch_size: int, device: torch.device, start: bool) -> EpochStreams:
    """A train worker's ``EpochStreams`` over its Ray dataset shard, with the config's shuffle buffer, prefetch and
    read-ahead (``auto``: with GPUs only). ``start``: with read-ahead, begin the first epoch's stream now, so its
    first shards are read while rank 0 loads dev."""
    read_ahead = cfg.read_ahead == "true" or (cfg.read_ahead == "auto" and cfg.use_gpu)
    streams = EpochStreams(lambda: shard.iter_torch_batches(
        batch_size=batch_size, local_shuffle_buffer_size=cfg.shuffle_buffer, prefetch_batches=cfg.prefetch_batches,
        drop_last=True, device=device), depth=cfg.prefetch_batches, read_ahead=read_ahead)
    if start:
        streams.start_next()
    return streams


def say(message: str) -> None:
    """Print one line from a train worker once. Ray Train swaps ``print`` for a logger that also tees to
    ``sys.stdout`` whenever a library has wrapped it (MLflow does on rank 0), so a plain ``print`` reached
    the driver twice; printing to the process's own stdout takes neither path."""
    import sys

    print(message, file=sys.__stdout__, flush=True)


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
        datasets: dict[str, Any]):
    """Ray Train DDP over ``cfg.workers`` workers; the same run name and storage resume a stopped run.

    Ray Train keeps its checkpoints under OUT/ray itself, a URI included (every worker node writes there)."""
    import mlflow
    import ray.train
    from ray.train.torch import TorchTrainer

    from vsa_dist.ray_env import worker_request

    trainer = TorchTrainer(
        train_loop,
        train_loop_config={**loop_config, "cfg": cfglib.to_dict(cfg), "mlflow_run_id": record["mlflow_run_id"],
                           "tracking_uri": mlflow.get_tracking_uri()},
        scaling_config=ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.use_gpu,
                                               resources_per_worker=worker_request(cfg.use_gpu, cfg.threads)),
        run_config=ray.train.RunConfig(
            name=record["name"], storage_path=ray_storage(cfg.out),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=2),
            failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures)),
        datasets=datasets,
    )
    result = trainer.fit()
    if result.checkpoint is None:
        raise RuntimeError(f"run {record['name']} reported no checkpoint")
    return result


def ray_storage(out: str) -> str:
    return storage.join(out, "ray") if storage.is_remote(out) else str(Path(out).resolve() / "ray")


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


def check_features(features: str, need_test: bool) -> None:
    """Config validation shared by the training stages: a feature folder with train, dev (and test) images."""
    from vsa_dist.features.format import load_features_manifest

    if not features or not storage.exists(storage.join(features, "manifest.json")):
        raise cfglib.ConfigError(f"features {features!r}: no manifest.json there (run vsa features first)")
    splits = load_features_manifest(features)["splits"]
    for split in ("train", "dev") + (("test",) if need_test else ()):
        if not splits.get(split, {}).get("images"):
            raise cfglib.ConfigError(f"features {features}: no {split!r} images")


def train_dataset(features: str, vocab: list[str], max_words: int, whole_image_only: bool = False,
                  snippets: str = "", seed: int = 0):
    """The train split of a feature folder (or of a snippet folder: full images and regions with their
    snippets) as a streaming Ray Dataset of fixed-shape arrays, its shard order shuffled anew every epoch."""
    import ray
    from ray.data import FileShuffleConfig

    from vsa_dist.data.pairs import feature_sample_to_row, snippet_rows_to_arrays, word_index
    from vsa_dist.data.shards import shard_paths

    kwargs: dict[str, Any] = {"index": word_index(vocab), "max_words": max_words}
    # The shard order is shuffled anew each execution (each epoch), and each worker's local shuffle buffer
    # mixes images within the stream. That is coarser than the randomize_block_order it replaces (Ray Data
    # splits a shard into several blocks), but that was an all-to-all step: it held back the first batch of
    # every epoch until the whole split had been read into the object store (the data wait, and memory that
    # grew with the split).
    # Reading and unpacking float16 arrays is light work: it takes no CPU slot, so that training workers
    # holding every CPU (2 workers on 2 cores) cannot starve their own input. Only the members a row needs are
    # read (not boxes or proposals).
    read = functools.partial(ray.data.read_webdataset, num_cpus=0, concurrency=2,
                             fileselect=["*.feat.npy", "*.json"],
                             shuffle=FileShuffleConfig(seed=seed, reseed_after_execution=True))
    if snippets:  # one image gives several rows (the image, then its regions): a map of its own
        return read(shard_paths(snippets, ["train"]), decoder=None).map_batches(
            snippet_rows_to_arrays, batch_size=64, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2),
            fn_kwargs=kwargs)
    # Rows made inside the read, as its decoder, not by a map_batches after it: the two did not fuse into one
    # operator, and the second one's tasks, their worker processes and the blocks passed between them doubled
    # the CPU an epoch's stream costs (benchmarks/data_wait.py --reads map,decoder; docs/alignment.md).
    return read(shard_paths(features, ["train"]),
                decoder=functools.partial(feature_sample_to_row, whole_image_only=whole_image_only, **kwargs))


def end_epoch(loop_config: dict[str, Any], logger, metrics: dict[str, Any], score: float, best: dict[str, Any],
              model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """Rank 0 after its dev evaluation: keep the best model, log the epoch, build the checkpoint state.
    Returns (best, checkpoint state)."""
    epoch = metrics["epoch"]
    best = keep_if_best(best, score, epoch, model)
    metrics["best_dev_epoch"] = best["epoch"]
    log_epoch(logger, loop_config["mlflow_run_id"], metrics, epoch)
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch, "best": best,
             "config": loop_config["cfg"], "vocab": loop_config["vocab"], "feature_dim": loop_config["feature_dim"],
             "feature_settings": loop_config["feature_settings"]}
    return best, state


@dataclass
class Trained:
    """What a finished ``train`` hands back to its stage for testing and registering."""

    model: torch.nn.Module
    state: dict[str, Any]       # the checkpoint's metadata: config, vocab, best (epoch, score), …
    checkpoint: Path            # OUT/best.pt
    manifest: dict[str, Any]    # the feature folder's manifest
    run_id: str                 # MLflow
    last_metrics: dict[str, Any]


def train(cfg: Any, stage: str, train_loop: Callable[[dict[str, Any]], None],
          load_model: Callable[[Path], tuple[torch.nn.Module, dict[str, Any]]], whole_image_only: bool = False) -> Trained:
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
    if not storage.is_remote(cfg.features):
        cfg.features = str(Path(cfg.features).resolve())
    manifest = load_features_manifest(cfg.features)
    snippets = getattr(cfg, "snippets", "")
    settings = check_same_settings({cfg.features: manifest, **({snippets: load_manifest(snippets)} if snippets else {})})
    vocab = manifest["vocab"]["words"]
    check_tracking_store()  # an unreachable MLflow server fails here in seconds, not after Ray has started
    ensure_ray(cfg.progress)
    check_placeable(worker_request(cfg.use_gpu, cfg.threads), cfg.workers, f"{stage} --workers {cfg.workers}")
    record = start_run(cfg, out, settings, prefix=stage.removeprefix("train-"))
    print(f"{stage}: MLflow run {record['mlflow_run_id']} ({mlflow.get_tracking_uri()}), Ray Train run "
          f"{record['name']} in {cfg.out}", flush=True)
    loop_config = {"vocab": vocab, "feature_dim": settings["feature_dim"], "feature_settings": settings}
    dataset = train_dataset(cfg.features, vocab, cfg.max_words, whole_image_only, snippets, cfg.seed)
    result = fit(train_loop, loop_config, cfg, record, {"train": dataset})
    model, state, final = save_best(result, out, load_model)
    return Trained(model, state, final, manifest, record["mlflow_run_id"], dict(getattr(result, "metrics", None) or {}))


def finish(cfg: Any, stage: str, trained: Trained, summary: dict[str, Any]) -> dict[str, Any]:
    """End a training stage: the summary to MLflow and beside ``best.pt``, the MLflow run closed, and the run
    folder published when OUT is a storage URI."""
    import mlflow

    mlflow.log_dict(summary, "summary.json")
    mlflow.end_run()
    atomic_write_json(trained.checkpoint.parent / "summary.json", summary)
    storage.publish(trained.checkpoint.parent, cfg.out, skip=("ray",))
    print(f"{stage}: done; MLflow run id {trained.run_id}; outputs in {cfg.out}", flush=True)
    return summary
