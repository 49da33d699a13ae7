"""Where an epoch's first-batch wait goes: the training stages' train stream under Ray Train, with no model.

    python benchmarks/data_wait.py                                   # runs/flickr8k/features, buffers 1000 and 250
    python benchmarks/data_wait.py --buffers 1000,250,50 --epochs 3 --pause 20

Two Ray Train workers read the train split of a feature folder exactly as ``vsa train-align`` does
(``training.train_dataset``, ``iter_torch_batches`` with the same batch and prefetch settings), and do nothing
with the batches; between epochs every worker pauses ``--pause`` seconds, standing in for rank 0's dev
evaluation. Per local shuffle buffer size, it prints each epoch's wait for its first batch and its whole
read time. One run, one machine: compare the buffer sizes with each other, not with other runs. Writes
WORK/data_wait.json (default runs/bench/).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist.paths import runs_root  # noqa: E402


def read_only_loop(config: dict) -> None:
    import ray.train

    shard = ray.train.get_dataset_shard("train")
    for epoch in range(1, config["epochs"] + 1):
        asked = start = time.time()
        first, rows = None, 0
        for batch in shard.iter_torch_batches(batch_size=config["batch"], drop_last=True,
                                              local_shuffle_buffer_size=config["buffer"], prefetch_batches=4):
            if first is None:
                first = time.time() - asked
            rows += len(batch["tokens"])
        record = {"rank": ray.train.get_context().get_world_rank(), "epoch": epoch,
                  "first_batch_wait_s": round(first or 0.0, 2), "epoch_read_s": round(time.time() - start, 2), "rows": rows}
        with open(config["log"], "a") as log:  # one machine: every worker appends its line
            log.write(json.dumps(record) + "\n")
        ray.train.report(record)
        time.sleep(config["pause"])


def measure(features: str, buffer: int, epochs: int, pause: float, workers: int, batch: int, work: Path) -> list[dict]:
    import ray.train
    from ray.train.torch import TorchTrainer

    from vsa_dist.training import train_dataset

    vocab = json.loads((Path(features) / "manifest.json").read_text())["vocab"]["words"]
    log = work / f"buffer-{buffer}.jsonl"
    log.unlink(missing_ok=True)
    trainer = TorchTrainer(
        read_only_loop,
        train_loop_config={"epochs": epochs, "buffer": buffer, "pause": pause, "batch": batch, "log": str(log.resolve())},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"data-wait-b{buffer}-{int(time.time())}", storage_path=str(work.resolve())),
        datasets={"train": train_dataset(features, vocab, 32)},
    )
    trainer.fit()
    return sorted((json.loads(line) for line in log.read_text().splitlines()), key=lambda r: (r["epoch"], r["rank"]))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default=str(runs_root() / "flickr8k" / "features"))
    parser.add_argument("--buffers", default="1000,250", help="local shuffle buffer sizes (rows) to compare")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--pause", type=float, default=20.0, help="seconds between epochs (rank 0's dev evaluation)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=50, help="rows per worker batch (train-align: 100 pairs / 2 workers)")
    parser.add_argument("--work", default=str(runs_root() / "bench" / "data_wait"))
    args = parser.parse_args(argv)
    import ray

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = False
    result = {}
    for buffer in (int(b) for b in args.buffers.split(",")):
        result[str(buffer)] = measure(args.features, buffer, args.epochs, args.pause, args.workers, args.batch, work)
        print(f"shuffle buffer {buffer}: {json.dumps(result[str(buffer)])}", flush=True)
    (work / "data_wait.json").write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
