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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsa_dist import config as cfglib
from vsa_dist import storage, training
from vsa_dist.config import option

# torch and the model are imported where they are used, not here: `vsa train-align --help` needs only the config
if TYPE_CHECKING:
    import torch

    from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel


@dataclass
class AlignConfig(training.TrainConfig):
    """Train the alignment model (BRNN + region embeddings) on feature shards."""

    epochs: int = option(20, "passes over the train images (one sentence per image per pass)", range="[1, inf)")
    weight_decay: float = option(1e-4, "L2 weight decay (chosen on dev)", range="[0, inf)")
    dropout: float = option(0.1, "dropout on the non-recurrent layers; the paper gives no rate: 0.1 chosen on dev "
                                 "over 0.5 (docs/alignment.md)", range="[0, 1)")
    lr_schedule: str = option("cosine", "constant, or cosine: decay to 0 over the planned epochs; the paper gives "
                                        "none, and at a constant 1e-4 dev stalled from the second epoch "
                                        "(docs/alignment.md)", choices=training.LR_SCHEDULES)
    experiment: str = option("vsa-align", "MLflow experiment")
    register_as: str = option("vsa-align", "registered model name; empty: do not register")
    alias: str = option("champion", "alias moved to the new version when it beats the holder on dev (R@1+5+10 sum)")
    embed_dim: int = option(1000, "multimodal space h", range="[1, inf)")
    word_dim: int = option(300, "word vector size", range="[1, inf)")
    score_norm: str = option("sum", "sum over words (paper) or mean", choices=("sum", "mean"))
    hardest_negative: bool = option(False, "hinge on the hardest negative only (VSE++)")
    hardest_warmup_epochs: int = option(0, "with hardest_negative: all negatives for this many epochs first (VSE++'s "
                                           "warm-up; from scratch the hardest alone collapsed here)", range="[0, inf)")
    margin: float = option(1.0, "the hinge's margin (paper: 1; about 0.2 with cosine scores)", range="(0, inf)")
    word_rnn: str = option("relu", "relu (the paper's BRNN) or gru (a bidirectional GRU)", choices=("relu", "gru"))
    cosine: bool = option(False, "region and word vectors at unit length: scores are cosines")
    local_weight: float = option(1.0, "weight of the paper's region-word term in the score", range="[0, inf)")
    global_weight: float = option(0.0, "weight of a global term, cos(whole image's v_0, mean word vector), beside it",
                                  range="[0, inf)")
    global_pooling: str = option("mean", "the global term's vectors: mean (v_0 and the mean word vector) or gpo "
                                         "(learned GPO pooling over all the region vectors and over the words)",
                                  choices=("mean", "gpo"))
    local_pooling: str = option("max", "each word's region in the region-word term: max (the paper's best region) "
                                       "or attention (SCAN's text-to-image attention; needs cosine)",
                                 choices=("max", "attention"))
    regions: bool = option(True, "score the regions beside the whole image; false: the whole image alone (the "
                                 "ablation in docs/alignment.md: with the paper's score every word then takes v_0)")
    all_sentences: bool = option(False, "each image brings all its sentences to a step, each a positive pair (a pass "
                                        "covers every pair; an image's other sentences are not its negatives; "
                                        "batch_size then counts images); false: one drawn per image per pass (paper)")
    gather_negatives: bool = option(True, "with N workers, rank against the whole batch's pairs (the paper's batch), "
                                          "not each worker's share")

    def validate(self) -> None:
        self.validate_training(default_out="align", min_batch=2)
        if self.local_pooling == "attention" and not self.cosine:
            raise cfglib.ConfigError("local_pooling=attention scores cosines: set cosine=true")
        if not self.local_weight and not self.global_weight:
            raise cfglib.ConfigError("local_weight and global_weight are both 0: nothing would score")


def model_args(cfg: AlignConfig, vocab_size: int, feature_dim: int) -> AlignmentArgs:
    from vsa_dist.models.alignment import AlignmentArgs

    return AlignmentArgs(vocab_size=vocab_size, feature_dim=feature_dim, embed_dim=cfg.embed_dim, word_dim=cfg.word_dim,
                         dropout=cfg.dropout, score_norm=cfg.score_norm, hardest_negative=cfg.hardest_negative,
                         margin=cfg.margin, word_rnn=cfg.word_rnn, cosine=cfg.cosine, local_weight=cfg.local_weight,
                         global_weight=cfg.global_weight, regions=cfg.regions,
                         global_pooling=cfg.global_pooling, local_pooling=cfg.local_pooling)


class AlignTask:
    """The alignment model's part of the shared epoch loop (``training.run_epochs``)."""

    name = "train-align"

    def __init__(self, spec: training.RunSpec):
        self.spec, self.cfg = spec, spec.cfg
        self.vocab, self.feature_dim = spec.vocab, spec.feature_dim

    def build_model(self) -> AlignmentModel:
        from vsa_dist.models.alignment import AlignmentModel

        return AlignmentModel(model_args(self.cfg, len(self.vocab) + 2, self.feature_dim))

    def rows_per_worker(self, world: int) -> int:
        self.rows = self.cfg.batch_size // world
        return self.rows

    def initialise(self, model: AlignmentModel) -> None:
        pass

    def prepare(self, rank: int, world: int) -> None:
        import torch

        from vsa_dist.data.pairs import load_split, word_index
        from vsa_dist.distributed import gather_across_workers

        cfg = self.cfg
        # with N workers, each ranks its pairs against the whole batch's (the paper's batch), not its share's
        self.gather = gather_across_workers if cfg.gather_negatives and world > 1 else None
        if rank == 0:
            dev = load_split(cfg.features, "dev", word_index(self.vocab), cfg.max_words)
            self.dev_features = torch.from_numpy(dev["features"])
            self.dev_tokens = torch.from_numpy(dev["tokens"]).long()

    def begin_epoch(self, plain: AlignmentModel, epoch: int) -> None:
        plain.use_hardest = self.cfg.hardest_negative and epoch > self.cfg.hardest_warmup_epochs

    def step(self, model, plain, batch) -> tuple[torch.Tensor, dict[str, float]]:
        from vsa_dist.models.alignment import one_sentence_each
        from vsa_dist.models.tokens import PAD

        tokens = batch["tokens"].long() if self.cfg.all_sentences else one_sentence_each(batch["tokens"].long())
        features = batch["features"]
        if features.dim() == 2:  # the whole image's row alone was streamed ([B, D]; see run): one row per image
            features = features[:, None]
        loss = model(features, tokens, gather=self.gather)
        return loss, {"loss": loss.item(), "pairs": int((tokens != PAD).any(dim=-1).sum())}

    def train_metrics(self, sums, steps: int, seconds: float, world: int) -> tuple[dict[str, float], str]:
        metrics = {"train_loss": sums["loss"] / max(steps, 1), "pairs_per_s": sums["pairs"] * world / seconds}
        return metrics, f"loss {metrics['train_loss']:.2f}, {metrics['pairs_per_s']:.0f} pairs/s"

    def evaluate(self, plain: AlignmentModel) -> tuple[float, dict[str, float], str]:
        from vsa_dist.eval.retrieval import beats_row, evaluate_alignment, flat_metrics, rsum

        dev = evaluate_alignment(plain, self.dev_features, self.dev_tokens)
        # 1 from the first epoch whose dev numbers beat the paper's test row in all eight columns (learning
        # efficiency: the summary's minutes_to_paper_row reads when that was)
        metrics = {**flat_metrics("dev", dev), "dev_rsum": rsum(dev), "dev_beats_paper_row": float(beats_row(dev))}
        return metrics["dev_rsum"], metrics, (f"dev rsum {metrics['dev_rsum']:.1f} "
                                              f"(R@1 {dev['annotation']['r1']:.1f}/{dev['search']['r1']:.1f})")


CONFIG, TASK = AlignConfig, AlignTask  # what vsa tune drives


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    training.run_epochs(AlignTask(loop_config["spec"]))


def run(cfg: AlignConfig) -> dict[str, Any]:
    import mlflow
    import torch

    from vsa_dist.checkpoints import load_alignment
    from vsa_dist.data.pairs import load_split, word_index
    from vsa_dist.eval.retrieval import evaluate_alignment, flat_metrics, retrieval_line
    from vsa_dist.models.alignment import reads_regions

    # a score that reads only the whole image's row needs only that row streamed (a twentieth of the bytes)
    trained = training.train(cfg, "train-align", train_loop, load_alignment,
                             whole_image_only=not reads_regions(cfg))
    model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
    settings, vocab = trained.manifest["settings"], trained.manifest["vocab"]["words"]

    # learning efficiency: when dev first beat the paper's row in all eight columns (None: it never did)
    reached = training.first_reached(run_id, "dev_beats_paper_row")
    summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                               "best_dev_rsum": state["best"]["score"], "checkpoint": storage.join(cfg.out, final.name),
                               "last_epoch": trained.last_metrics,
                               "minutes_to_paper_row": reached and reached["minutes"],
                               "epoch_to_paper_row": reached and reached["epoch"]}
    if cfg.test:
        test = load_split(cfg.features, "test", word_index(vocab), cfg.max_words)
        test_metrics = evaluate_alignment(
            model, torch.from_numpy(test["features"]), torch.from_numpy(test["tokens"]).long()
        )
        mlflow.log_metrics(flat_metrics("test", test_metrics))
        summary["test"] = test_metrics
        print(f"train-align: test (best dev epoch {state['best']['epoch']}): {retrieval_line(test_metrics)}",
              flush=True)
    if not cfg.register_as:  # a registered model carries the checkpoint itself: logged once, not twice
        mlflow.log_artifact(str(final), artifact_path="checkpoint")
    else:
        from vsa_dist.serving import dev_data_id, log_alignment_model

        dev = load_split(cfg.features, "dev", word_index(vocab), cfg.max_words, whole_image_only=True)  # for its ids
        summary["registered"] = log_alignment_model(final, cfg.register_as, settings, state["best"]["score"], cfg.alias,
                                                    dev_data_id(dev))
    return training.finish(cfg, "train-align", trained, summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return cfglib.run_stage(AlignConfig, run, argv, prog="vsa train-align", preset="train_align")
