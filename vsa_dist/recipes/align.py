"""The alignment model's recipe (section 3.1): the model its config builds, the rows it streams, its step (the
bidirectional ranking loss), dev retrieval as the score that picks the best epoch, and its ending: test once,
register ``vsa-align``."""

from __future__ import annotations

from typing import Any

import mlflow
import torch

from vsa_dist import storage
from vsa_dist.checkpoints import load_alignment
from vsa_dist.data.images import DEFAULT_MAX_PIXELS
from vsa_dist.data.manifests import as_pixel_input, dataset_label, image_shards, load_features_manifest
from vsa_dist.data.pairs import word_index
from vsa_dist.data.splits import load_split
from vsa_dist.distributed import gather_across_workers
from vsa_dist.eval.retrieval import beats_row, evaluate_alignment, flat_metrics, retrieval_line, rsum
from vsa_dist.features.extract import check_weights
from vsa_dist.models.alignment import AlignmentModel, one_sentence_each
from vsa_dist.models.args import AlignmentArgs, AlignmentSettings, reads_regions, settings_of
from vsa_dist.models.backbone import fast_bf16, load_backbone
from vsa_dist.models.tokens import PAD
from vsa_dist.recipes.config import AlignConfig
from vsa_dist.serving import dev_data_id, log_alignment_model
from vsa_dist.training.run import first_reached
from vsa_dist.training.session import RunSpec, Trained
from vsa_dist.training.streams import TrainStream


def model_args(cfg: AlignConfig, vocab_size: int, feature_dim: int, **data: Any) -> AlignmentArgs:
    """The model a config builds: every setting the model has comes from the config, by name (models/args.py); the
    rest from the data (``data``: more of ``AlignmentArgs``' fields, such as the CNN it carries)."""
    return AlignmentArgs(vocab_size=vocab_size, feature_dim=feature_dim, **data, **settings_of(cfg, AlignmentSettings))


def encoder_args(cfg: AlignConfig, feature_settings: dict[str, Any]) -> dict[str, Any]:
    """The CNN the model carries (``AlignmentArgs.encoder``): with ``encoder=cached``, the trunk folder's backbone from
    its trunk block on; with ``full``, the feature folder's whole backbone (from block 0: it takes the images); none
    with ``frozen``."""
    if cfg.encoder == "frozen":
        return {}
    return {"encoder": feature_settings["backbone"],
            "trunk_block": feature_settings["trunk_block"] if cfg.encoder == "cached" else 0}


def image_size(cfg: AlignConfig) -> int:
    """The images' side in pixels when the model takes the images themselves (``encoder=full``), else 0."""
    return load_features_manifest(cfg.features)["settings"]["input_size"] if cfg.encoder == "full" else 0


def eval_split(cfg: AlignConfig, split: str, vocab: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """A dev or test split as the model takes it: the feature folder's rows (or trunk maps), or with ``encoder=full``
    the images decoded from its image shards; and the sentences' word ids."""
    data = load_split(cfg.features, split, word_index(vocab), cfg.max_words, image_size=image_size(cfg))
    return torch.from_numpy(data["features"]), torch.from_numpy(data["tokens"]).long()


class AlignTask:
    """The alignment model's part of the shared epoch loop (``training.run_epochs``), and its driver's."""

    name, config = "train-align", AlignConfig

    @staticmethod
    def stream(cfg: AlignConfig) -> TrainStream:
        if cfg.encoder == "full":  # the images themselves, decoded and augmented by Ray Data's read tasks
            return TrainStream(max_words=cfg.max_words, images=image_shards(cfg.features), image_size=image_size(cfg),
                               crop_min_area=cfg.crop_min_area, flip=cfg.image_flip, max_pixels=DEFAULT_MAX_PIXELS,
                               decoders=cfg.image_decoders)
        # a score that reads only the whole image's row needs only that row streamed (a twentieth of the bytes); a
        # trunk folder holds nothing else
        return TrainStream(max_words=cfg.max_words, whole_image_only=not reads_regions(cfg) and cfg.encoder == "frozen",
                           augment=tuple(cfg.augment))

    @staticmethod
    def check_checkpoints(cfg: AlignConfig) -> None:
        """It starts from no checkpoint."""

    load_best = staticmethod(load_alignment)

    def __init__(self, spec: RunSpec):
        self.spec, self.cfg = spec, spec.cfg
        self.vocab, self.feature_dim = spec.vocab, spec.feature_dim

    def build_model(self) -> AlignmentModel:
        cfg = self.cfg
        model = AlignmentModel(model_args(cfg, len(self.vocab) + 2, self.feature_dim,  # + PAD, UNK
                                          **encoder_args(cfg, self.spec.feature_settings)))
        if model.encoder is not None:
            model.encoder.freeze_below(cfg.cnn_train_from)
            model.encoder.batchnorm = cfg.cnn_batchnorm
            model.encoder.bf16 = fast_bf16("cuda" if cfg.use_gpu else "cpu")
        if cfg.encoder == "full":  # the convolutions' fast layout, for the whole network's forward and backward
            model.encoder.to(memory_format=torch.channels_last)
            model.encoder.channels_last = True
        return model

    def param_groups(self, model: AlignmentModel) -> list[dict[str, Any]]:
        """The CNN's blocks at their own rate and weight decay (and held still for ``cnn_frozen_epochs``)."""
        head = [p for name, p in model.named_parameters() if not name.startswith("encoder.")]
        if model.encoder is None:
            return [{"params": head}]
        cfg = self.cfg
        cnn = [p for p in model.encoder.parameters() if p.requires_grad]
        return [{"params": head}, {"params": cnn, "lr_scale": cfg.cnn_lr / cfg.lr, "weight_decay": cfg.cnn_weight_decay,
                                   "still_epochs": cfg.cnn_frozen_epochs}]

    def rows_per_worker(self, world: int) -> int:
        self.rows = self.cfg.batch_size // world
        return self.rows

    def initialise(self, model: AlignmentModel) -> None:
        """A fresh run's CNN starts pretrained: the weights the feature (or trunk) folder was made with."""
        if model.encoder is None:
            return
        settings = self.spec.feature_settings
        pretrained = load_backbone(settings["backbone"])
        check_weights(pretrained.spec.weights, settings, "the feature folder was made with",
                      f"install the {settings['backbone']} weights it was made with")
        model.encoder.net.load_state_dict(pretrained.trunk.net.state_dict())

    def prepare(self, rank: int, world: int) -> None:
        cfg = self.cfg
        # with N workers, each ranks its pairs against the whole batch's (the paper's batch), not its share's
        self.gather = gather_across_workers if cfg.gather_negatives and world > 1 else None
        if rank == 0:
            self.dev_features, self.dev_tokens = eval_split(cfg, "dev", self.vocab)

    def begin_epoch(self, plain: AlignmentModel, epoch: int) -> None:
        plain.use_hardest = self.cfg.hardest_negative and epoch > self.cfg.hardest_warmup_epochs

    def step(self, model, plain, batch) -> tuple[torch.Tensor, dict[str, float]]:
        tokens = batch["tokens"].long() if self.cfg.all_sentences else one_sentence_each(batch["tokens"].long())
        features = batch["image"] if "image" in batch else batch["features"]  # images: encoder full
        if features.dim() == 2:  # the whole image's row alone was streamed ([B, D]; see stream): one row per image
            features = features[:, None]
        loss = model(features, tokens, gather=self.gather)
        return loss, {"loss": loss.item(), "pairs": int((tokens != PAD).any(dim=-1).sum())}

    def train_metrics(self, sums, steps: int, seconds: float, world: int) -> tuple[dict[str, float], str]:
        metrics = {"train_loss": sums["loss"] / max(steps, 1), "pairs_per_s": sums["pairs"] * world / seconds}
        return metrics, f"loss {metrics['train_loss']:.2f}, {metrics['pairs_per_s']:.0f} pairs/s"

    def evaluate(self, plain: AlignmentModel) -> tuple[float, dict[str, float], str]:
        dev = evaluate_alignment(plain, self.dev_features, self.dev_tokens)
        # 1 from the first epoch whose dev numbers beat the paper's test row in all eight columns (learning
        # efficiency: the summary's minutes_to_paper_row reads when that was)
        metrics = {**flat_metrics("dev", dev), "dev_rsum": rsum(dev), "dev_beats_paper_row": float(beats_row(dev))}
        return metrics["dev_rsum"], metrics, (f"dev rsum {metrics['dev_rsum']:.1f} "
                                              f"(R@1 {dev['annotation']['r1']:.1f}/{dev['search']['r1']:.1f})")

    @staticmethod
    def conclude(cfg: AlignConfig, trained: Trained) -> dict[str, Any]:
        """The best-on-dev model scored on test once, then registered; the alias moves when it beats the holder's
        dev R@1+5+10 sum on the same dev data."""
        model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
        settings, vocab = trained.manifest["settings"], trained.manifest["vocab"]["words"]
        # the registered model takes the images when it trained on them (training/streams.py)
        settings = as_pixel_input(settings, cfg.encoder == "full")
        # learning efficiency: when dev first beat the paper's row in all eight columns (None: it never did)
        reached = first_reached(run_id, "dev_beats_paper_row")
        summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                                   "best_dev_rsum": state["best"]["score"],
                                   "checkpoint": storage.join(cfg.out, final.name), "last_epoch": trained.last_metrics,
                                   "minutes_to_paper_row": reached and reached["minutes"],
                                   "epoch_to_paper_row": reached and reached["epoch"]}
        if cfg.test:
            test_metrics = evaluate_alignment(model, *eval_split(cfg, "test", vocab))
            mlflow.log_metrics(flat_metrics("test", test_metrics))
            summary["test"] = test_metrics
            print(f"train-align: test (best dev epoch {state['best']['epoch']}): {retrieval_line(test_metrics)}",
                  flush=True)
        if not cfg.register_as:  # a registered model carries the checkpoint itself: logged once, not twice
            mlflow.log_artifact(str(final), artifact_path="checkpoint")
        else:
            dev = load_split(cfg.features, "dev", word_index(vocab), cfg.max_words, whole_image_only=True)  # its ids
            summary["registered"] = log_alignment_model(final, cfg.register_as, settings, state["best"]["score"],
                                                        cfg.alias, dev_data_id(dev), dataset_label(cfg.features))
        return summary
