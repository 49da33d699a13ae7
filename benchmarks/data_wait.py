"""Where an epoch's first-batch wait goes: the training stages' train stream under Ray Train, with stand-in work.

    python benchmarks/data_wait.py                      # runs/flickr8k/features: late vs early start, CPU-bound work
    python benchmarks/data_wait.py --work-kind sleep --step-s 0 --starts late,early --buffers 1000,250
    python benchmarks/data_wait.py --starts late --reads map,decoder    # rows made by a map_batches vs in the read
    python benchmarks/data_wait.py --read-cost --reads map,decoder      # the stream alone: CPU and first batch per pass

Two Ray Train workers read the train split of a feature folder exactly as ``vsa train-align`` does
(``training.train_dataset``, ``training.EpochStreams`` over ``iter_torch_batches`` with the same batch and
prefetch settings). Each batch costs ``--step-s`` seconds of one-thread CPU work, standing in for a training
step, and between epochs rank 0 works ``--pause`` seconds on every core, standing in for its dev evaluation
(``--work-kind sleep``: both only sleep, which hides what the read costs the CPU). The work is a fixed number
of matrix products calibrated once at start, so both settings do the same work. ``early``: the next epoch's
stream is started before the pause, as the training stages do with ``--read-ahead true`` (their default); ``late``:
after it, as with ``--read-ahead false``. Per setting it prints each epoch's wait for its first batch, its steps' time
and its whole cycle (steps + pause + waits): on a machine whose cores the read competes for, only a shorter cycle is a
gain. ``--reads``: ``decoder`` makes the rows inside the read (``train_dataset``, the stages' way); ``map`` makes the
same rows in a ``map_batches`` after the read (the comparison that chose it). ``--read-cost``: no Ray Train and no
stand-in work; this process reads the stream ``--epochs`` times per setting, ``--pause`` seconds apart (long enough for
Ray to end its idle workers, as during a dev evaluation), and prints each pass's wait for its first batch, its wall time
and the CPU time the whole machine spent on it. One run, one machine: compare the settings with each other, not with
other runs. Writes WORK/data_wait.json (default runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist.data.pairs import feature_sample_to_row, word_index  # noqa: E402
from vsa_dist.paths import runs_root  # noqa: E402

WORK_SIZE = 256  # the side of the matrices of the stand-in work


def busy(units: int, threads: int) -> None:
    """Fixed CPU work: ``units`` matrix products, the same in every setting compared."""
    import torch

    torch.set_num_threads(threads)
    a = torch.randn(WORK_SIZE, WORK_SIZE) / WORK_SIZE ** 0.5
    for _ in range(units):
        a = torch.tanh(a @ a)


def units_per_second() -> float:
    """How many one-thread units this machine does in a second, from a half-second sample."""
    busy(20, 1)
    start, units = time.perf_counter(), 0
    while time.perf_counter() - start < 0.5:
        busy(10, 1)
        units += 10
    return units / (time.perf_counter() - start)


def read_only_loop(config: dict) -> None:
    from types import SimpleNamespace

    import ray.train
    import torch

    from vsa_dist.training.streams import epoch_streams

    rank = ray.train.get_context().get_world_rank()
    stream_settings = SimpleNamespace(read_ahead="true" if config["early"] else "false", use_gpu=False,
                                      shuffle_buffer=config["buffer"], prefetch_batches=4)
    streams = epoch_streams(ray.train.get_dataset_shard("train"), stream_settings, config["batch"],
                            torch.device("cpu"), start=False)
    for epoch in range(1, config["epochs"] + 1):
        asked = start = time.time()
        first, rows, stepping = None, 0, 0.0
        for batch in streams.take():
            if first is None:
                first = time.time() - asked
            rows += len(batch["tokens"])
            began = time.time()
            busy(config["step_units"], 1)
            stepping += time.time() - began
        steps_done = time.time()
        if epoch < config["epochs"]:
            streams.start_next()  # only with read_ahead (early)
        if config["work_kind"] == "sleep":
            time.sleep(config["pause"])
        elif rank == 0:  # the others wait for it, as at the report after rank 0's dev evaluation
            busy(config["pause_units"], len(os.sched_getaffinity(0)))
        record = {"rank": rank, "epoch": epoch, "first_batch_wait_s": round(first or 0.0, 2),
                  "steps_s": round(stepping, 2), "epoch_read_s": round(steps_done - start, 2), "rows": rows}
        ray.train.report(record)  # every rank: a barrier
        record["cycle_s"] = round(time.time() - start, 2)
        with open(config["log"], "a") as log:  # one machine: every worker appends its line
            log.write(json.dumps(record) + "\n")


def rows_by_map(batch: dict, **kwargs) -> dict:
    """The stages' rows made by a ``map_batches`` over the raw read (what ``decoder`` is measured against)."""
    import numpy as np


    rows = [feature_sample_to_row({"feat.npy": raw_features, "json": raw_json}, **kwargs)
            for raw_features, raw_json in zip(batch["feat.npy"], batch["json"])]
    return {key: np.stack([row[key] for row in rows]) for key in ("features", "tokens")}


def train_stream(features: str, vocab: list[str], read: str):
    import ray.data
    from ray.data import FileShuffleConfig

    from vsa_dist.data.shards import shard_paths
    from vsa_dist.training.streams import TrainStream, train_dataset

    if read == "decoder":
        return train_dataset(features, vocab, TrainStream(max_words=32))
    return (ray.data.read_webdataset(shard_paths(features, ["train"]), decoder=None, num_cpus=0, concurrency=2,
                                     fileselect=["*.feat.npy", "*.json"],
                                     shuffle=FileShuffleConfig(seed=0, reseed_after_execution=True))
            .map_batches(rows_by_map, batch_size=64, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=2),
                         fn_kwargs={"index": word_index(vocab), "max_words": 32}))


def machine_cpu_seconds() -> float:
    """CPU time used by every process on the machine so far (/proc/stat: all but idle and iowait)."""
    with open("/proc/stat") as stat:
        ticks = [int(field) for field in stat.readline().split()[1:]]
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def measure(features: str, buffer: int, early: bool, work_config: dict, epochs: int, workers: int, batch: int,
            work: Path, read: str = "decoder") -> list[dict]:
    import ray.train
    from ray.train.torch import TorchTrainer

    vocab = json.loads((Path(features) / "manifest.json").read_text())["vocab"]["words"]
    name = f"{'early' if early else 'late'}-buffer-{buffer}-{read}"
    log = work / f"{name}.jsonl"
    log.unlink(missing_ok=True)
    trainer = TorchTrainer(
        read_only_loop,
        train_loop_config={"epochs": epochs, "buffer": buffer, "early": early, "batch": batch, **work_config,
                           "log": str(log.resolve())},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"data-wait-{name}-{int(time.time())}", storage_path=str(work.resolve())),
        datasets={"train": train_stream(features, vocab, read)},
    )
    trainer.fit()
    return sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: (r["epoch"], r["rank"]))


def read_cost(features: str, reads: list[str], passes: int, pause: float, buffer: int, batch: int) -> dict:
    vocab = json.loads((Path(features) / "manifest.json").read_text())["vocab"]["words"]
    result: dict = {}
    for index, read in enumerate(reads):  # a setting may come more than once: each keeps its own entry
        key, stream = f"{read} ({index})", train_stream(features, vocab, read)
        result[key] = []
        for _ in range(passes):
            time.sleep(pause)
            cpu_before, start, first, rows = machine_cpu_seconds(), time.time(), None, 0
            for rows_batch in stream.iter_torch_batches(batch_size=batch, local_shuffle_buffer_size=buffer,
                                                        prefetch_batches=4, drop_last=True):
                first = first if first is not None else time.time() - start
                rows += len(rows_batch["tokens"])
            result[key].append({"first_batch_s": round(first or 0.0, 2), "pass_s": round(time.time() - start, 2),
                                "machine_cpu_s": round(machine_cpu_seconds() - cpu_before, 1), "rows": rows})
            print(f"rows by {read}: {json.dumps(result[key][-1])}", flush=True)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--buffers", default="1000", help="local shuffle buffer sizes (rows) to compare")
    parser.add_argument("--starts", default="late,early",
                        help="when the next epoch's stream starts: late, early, or both in turn")
    parser.add_argument("--reads", default="decoder", help="how rows are made: decoder (in the read), map, or both")
    parser.add_argument("--read-cost", action="store_true", help="time the stream alone (no Ray Train, no work)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between epochs (rank 0's dev evaluation)")
    parser.add_argument("--work-kind", default="cpu", choices=("cpu", "sleep"), help="what the steps and the pause do")
    parser.add_argument("--step-s", type=float, default=0.4, help="seconds of one-thread work per batch (cpu)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--batch", type=int, default=50, help="rows per worker batch (train-align: 100 pairs / 2 workers)"
    )
    parser.add_argument("--work", default=str(runs_root() / "bench" / "data_wait"))
    args = parser.parse_args(argv)
    import ray

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False
    if args.read_cost:
        result = read_cost(
            args.features, args.reads.split(","), args.epochs, args.pause, int(args.buffers.split(",")[0]), args.batch
        )
        (work / "read_cost.json").write_text(json.dumps(result, indent=1))
        return result
    rate = units_per_second()
    work_config = {"work_kind": args.work_kind, "pause": args.pause,
                   "step_units": round(args.step_s * rate) if args.work_kind == "cpu" else 0,
                   "pause_units": round(args.pause * rate * len(os.sched_getaffinity(0)))}  # on every core
    print(f"stand-in work: {rate:.0f} units/s on one thread; {json.dumps(work_config)}", flush=True)
    result: dict = {"work": work_config}
    settings = [(read, start, int(buffer)) for read in args.reads.split(",") for start in args.starts.split(",")
                for buffer in args.buffers.split(",")]
    for index, (read, start, buffer) in enumerate(settings):  # a setting may come more than once: each its own entry
        key = f"rows by {read}, {start} start, shuffle buffer {buffer} ({index})"
        cpu_before = machine_cpu_seconds()
        result[key] = measure(args.features, buffer, start == "early", work_config, args.epochs,
                              args.workers, args.batch, work, read)
        cpu = machine_cpu_seconds() - cpu_before
        # the first epoch has its cold start, and the last pause reads nothing ahead in either setting
        middle = [r["cycle_s"] for r in result[key] if 1 < r["epoch"] < args.epochs]
        waits = [r["first_batch_wait_s"] for r in result[key] if r["epoch"] > 1]
        print(f"{key}: {json.dumps(result[key])}", flush=True)
        print(f"{key}: mean cycle of the middle epochs {sum(middle) / max(len(middle), 1):.1f} s, "
              f"mean first-batch wait after epoch 1 {sum(waits) / max(len(waits), 1):.2f} s, "
              f"machine CPU {cpu:.0f} s in all", flush=True)
    (work / "data_wait.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
