"""``vsa train-align``: the BRNN alignment model, trained with Ray Train (DDP), selected on dev, tested once.

    vsa train-align --features runs/flickr8k/features                       # the paper's settings
    vsa train-align --features runs/flickr8k/features --preset train_align_modern
    vsa train-align --features runs/flickr8k/features --resume              # continue the last run

Per epoch every worker streams its share of the train images from the feature shards (Ray Data,
shuffled), pairs each image with one of its sentences drawn at random, and steps; rank 0 then scores
the dev split (R@1/5/10 both ways), keeps the best model, logs to MLflow and reports a checkpoint.
After training, the best-on-dev model is evaluated on test once and registered as ``vsa-align``; the alias
``champion`` moves to it when it beats the holder's dev R@1+5+10 sum on the same dev data.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist import storage, training
from vsa_dist.checkpoints import read_checkpoint
from vsa_dist.data.pairs import load_split, word_index
from vsa_dist.eval.retrieval import evaluate_alignment
from vsa_dist.models.alignment import PAD, AlignmentArgs, AlignmentModel

@dataclass
class AlignConfig(training.TrainConfig):
    """Train the alignment model (BRNN + region embeddings) on feature shards."""

    epochs: int = field(default=20, metadata={"help": "passes over the train images (one sentence per image per pass)", "range": "[1, inf)"})
    weight_decay: float = field(default=1e-4, metadata={"help": "L2 weight decay (chosen on dev)", "range": "[0, inf)"})
    experiment: str = field(default="vsa-align", metadata={"help": "MLflow experiment"})
    register_as: str = field(default="vsa-align", metadata={"help": "registered model name; empty: do not register"})
    alias: str = field(default="champion", metadata={"help": "alias moved to the new version when it beats the holder on dev (R@1+5+10 sum)"})
    embed_dim: int = field(default=1000, metadata={"help": "multimodal space h", "range": "[1, inf)"})
    word_dim: int = field(default=300, metadata={"help": "word vector size", "range": "[1, inf)"})
    score_norm: str = field(default="sum", metadata={"help": "sum over words (paper) or mean"})
    hardest_negative: bool = field(default=False, metadata={"help": "hinge on the hardest negative only (VSE++)"})
    gather_negatives: bool = field(default=True, metadata={"help": "with N workers, rank against the whole batch's pairs (the paper's batch), not each worker's share"})

    def validate(self) -> None:
        self.validate_training(default_out="align", min_batch=2)
        training.check_choice("score_norm", self.score_norm, ("sum", "mean"))


def model_args(cfg: AlignConfig, vocab_size: int, feature_dim: int) -> AlignmentArgs:
    return AlignmentArgs(vocab_size=vocab_size, feature_dim=feature_dim, embed_dim=cfg.embed_dim, word_dim=cfg.word_dim,
                         dropout=cfg.dropout, score_norm=cfg.score_norm, hardest_negative=cfg.hardest_negative)


class _GatherRows(torch.autograd.Function):
    """Every worker's rows, concatenated in rank order. Backward: each worker's loss reached every worker's rows,
    so a row's gradient is the sum over workers (all_reduce) of which its owner keeps its own slice — a
    reduce-scatter made of calls every backend has (gloo has no reduce_scatter). torch's own
    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated for a private successor."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = len(tensor), dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        import torch.distributed as dist

        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_across_workers(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """All workers' tensors concatenated (gradients flow back to each owner), and this worker's row offset.
    Every worker has the same batch size: the train split is divided equally and batches drop the remainder."""
    import torch.distributed as dist

    return [_GatherRows.apply(t) for t in tensors], dist.get_rank() * len(tensors[0])


def one_sentence_each(tokens: torch.Tensor) -> torch.Tensor:
    """[B, S, T] → [B, T]: one of each image's non-empty sentences, drawn uniformly."""
    present = (tokens != PAD).any(dim=-1).float()                         # [B, S]
    choice = torch.multinomial(present, 1).squeeze(1)
    return tokens[torch.arange(len(tokens)), choice]


def rsum(metrics: dict[str, dict[str, float]]) -> float:
    """Model selection score: R@1 + R@5 + R@10 of both directions."""
    return sum(metrics[d][k] for d in ("annotation", "search") for k in ("r1", "r5", "r10"))


def flat_metrics(prefix: str, metrics: dict[str, dict[str, float]]) -> dict[str, float]:
    return {f"{prefix}_{d}_{k}": v for d, values in metrics.items() for k, v in values.items()}


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: load checkpoint → epochs of steps → report (rank 0: eval, log)."""
    import ray.train
    import ray.train.torch

    cfg = AlignConfig(**loop_config["cfg"])
    vocab, feature_dim = loop_config["vocab"], loop_config["feature_dim"]
    rank, world, device = training.worker_setup(cfg)

    model = AlignmentModel(model_args(cfg, len(vocab) + 2, feature_dim))
    optimizer = training.make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay)
    start_epoch, best = training.restore(model, optimizer)
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    train_shard = ray.train.get_dataset_shard("train")
    per_worker = cfg.batch_size // world
    streams = training.epoch_streams(train_shard, cfg, per_worker, device, start=start_epoch <= cfg.epochs)

    logger = None
    if rank == 0:  # the one rank that evaluates, logs and writes checkpoints
        from mlflow.tracking import MlflowClient

        logger = MlflowClient(loop_config["tracking_uri"])
        dev = load_split(cfg.features, "dev", word_index(vocab), cfg.max_words)
        dev_features, dev_tokens = torch.from_numpy(dev["features"]), torch.from_numpy(dev["tokens"]).long()

    gather = gather_across_workers if cfg.gather_negatives and world > 1 else None
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        lr = training.epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        training.set_lr(optimizer, lr)
        losses, steps = 0.0, 0
        clock = training.DataClock(streams.take())
        for batch in clock:
            tokens = one_sentence_each(batch["tokens"].long())
            loss = model(batch["features"], tokens, gather=gather)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip)
            optimizer.step()
            losses += loss.item()
            steps += 1
        timing = clock.metrics()
        if epoch < cfg.epochs:
            streams.start_next()  # with read-ahead, its first shards are read while rank 0 scores dev
        seconds = timing.pop("seconds")
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "train_loss": losses / max(steps, 1), "steps": steps,
                                   "pairs_per_s": steps * per_worker * world / seconds, **timing}
        state = None
        if rank == 0:
            with training.all_cores(cfg.threads):
                dev_metrics = evaluate_alignment(plain, dev_features, dev_tokens)
            metrics.update(flat_metrics("dev", dev_metrics), dev_rsum=rsum(dev_metrics))
            best, state = training.end_epoch(loop_config, logger, metrics, metrics["dev_rsum"], best, plain, optimizer)
            training.say(f"epoch {epoch}: loss {metrics['train_loss']:.2f}, dev rsum {metrics['dev_rsum']:.1f} "
                         f"(R@1 {dev_metrics['annotation']['r1']:.1f}/{dev_metrics['search']['r1']:.1f}), "
                         f"{metrics['pairs_per_s']:.0f} pairs/s, data wait {100 * metrics['data_wait_share']:.1f}% "
                         f"({metrics['first_batch_wait_s']:.1f} s of it for the first batch)")
        training.report(metrics, state)


def load_model(path: Path | str) -> tuple[AlignmentModel, dict[str, Any]]:
    """The best-on-dev model of a checkpoint (``torch.load(weights_only=True)``) and its metadata."""
    state = read_checkpoint(path)
    cfg = AlignConfig(**{k: v for k, v in state["config"].items() if k in AlignConfig.__dataclass_fields__})
    model = AlignmentModel(model_args(cfg, len(state["vocab"]) + 2, state["feature_dim"]))
    state["best"].setdefault("score", state["best"].pop("rsum", None))  # checkpoints before 2026-11-25
    model.load_state_dict(state["best"]["state"] or state["model"])
    return model.eval(), state


def run(cfg: AlignConfig) -> dict[str, Any]:
    import mlflow

    trained = training.train(cfg, "train-align", train_loop, load_model)
    model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
    settings, vocab = trained.manifest["settings"], trained.manifest["vocab"]["words"]

    summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                               "best_dev_rsum": state["best"]["score"], "checkpoint": storage.join(cfg.out, final.name),
                               "last_epoch": trained.last_metrics}
    if cfg.test:
        test = load_split(cfg.features, "test", word_index(vocab), cfg.max_words)
        test_metrics = evaluate_alignment(model, torch.from_numpy(test["features"]), torch.from_numpy(test["tokens"]).long())
        mlflow.log_metrics(flat_metrics("test", test_metrics))
        summary["test"] = test_metrics
        print(f"train-align: test (best dev epoch {state['best']['epoch']}): {json.dumps(test_metrics)}", flush=True)
    mlflow.log_artifact(str(final), artifact_path="checkpoint")
    if cfg.register_as:
        from vsa_dist.serving import dev_data_id, log_alignment_model

        dev = load_split(cfg.features, "dev", word_index(vocab), cfg.max_words, whole_image_only=True)  # for its ids
        summary["registered"] = log_alignment_model(final, cfg.register_as, settings, state["best"]["score"], cfg.alias,
                                                    dev_data_id(dev))
    return training.finish(cfg, "train-align", trained, summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return cfglib.run_stage(AlignConfig, run, argv, prog="vsa train-align", preset="train_align")
