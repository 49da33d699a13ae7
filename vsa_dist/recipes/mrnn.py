"""The generator's recipe (section 3.2): the model its config builds, the rows it streams, its step (teacher forcing,
or self-critical sampling with optional distillation), dev CIDEr of greedy captions as the score that picks the best
epoch, and its ending: the beam chosen on dev, test captioned and scored once, ``vsa-captioner`` registered."""

from __future__ import annotations

from typing import Any

import mlflow
import torch

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.checkpoints import load_generator, read_checkpoint
from vsa_dist.data.manifests import dataset_label
from vsa_dist.data.pairs import word_index
from vsa_dist.data.splits import load_split, split_sentence_ids
from vsa_dist.eval.captions import captions_line, diversity, perplexity, perplexity_of, require_java, score_captions
from vsa_dist.eval.cider import CiderD
from vsa_dist.examples import log_examples
from vsa_dist.features.format import load_features_manifest
from vsa_dist.models.args import MRNNArgs, MRNNSettings, settings_of
from vsa_dist.models.decoding import generate
from vsa_dist.models.losses import self_critical_loss, token_nll
from vsa_dist.models.mrnn import MRNN, MRNNEnsemble, sentence_rows, teacher_forcing
from vsa_dist.recipes.config import MRNNConfig
from vsa_dist.serving import dev_data_id, log_captioner
from vsa_dist.training.session import RunSpec, Trained
from vsa_dist.training.state import write_best
from vsa_dist.training.streams import TrainStream


def model_args(cfg: MRNNConfig, vocab_size: int, feature_dim: int) -> MRNNArgs:
    """The model a config builds over ``vocab_size`` words (ids PAD, UNK, words, END): every setting the model has
    comes from the config, by name (models/args.py)."""
    return MRNNArgs(vocab_size=vocab_size + 3, feature_dim=feature_dim, **settings_of(cfg, MRNNSettings))


def check_checkpoint(cfg: MRNNConfig, checkpoint: str, role: str) -> None:
    """An --init or --teacher checkpoint must be a generator over the feature folder's vocabulary, and one of the
    config's shape for --init."""
    try:
        saved = read_checkpoint(storage.fetch(checkpoint))
    except cfglib.ConfigError as err:  # a folder, a truncated file, not a torch checkpoint: say which and why
        raise cfglib.ConfigError(f"{role}: {err}") from err
    if saved.get("vocab") != load_features_manifest(cfg.features)["vocab"]["words"]:
        raise cfglib.ConfigError(f"{role} {checkpoint}: its vocabulary is not the one of {cfg.features}")
    if role == "teacher":  # any generator over these words can teach, whatever its shape
        return
    config = {"feature_norm": "unit", "attention": False, **saved.get("config", {})}
    shape = [name for name in settings_of(cfg, MRNNSettings) if name != "dropout"]  # what the weights' shapes follow
    differ = [k for k in shape if config.get(k) != getattr(cfg, k)]
    if differ:
        raise cfglib.ConfigError(f"init {cfg.init}: trained with a different " + ", ".join(
            f"{k} ({config.get(k)!r}, here {getattr(cfg, k)!r})" for k in differ))


def choose_beam(cfg: MRNNConfig, model: MRNN, dev: dict[str, Any], vocab: list[str]) -> tuple[int, dict[int, float]]:
    """The test-time beam size (the configured one, or the dev-CIDEr best of ``beam_choices``) and the dev
    CIDEr of each size tried."""
    features = torch.from_numpy(dev["features"]).float()
    by_beam = {k: score_captions(dev, generate(model, features, vocab, k, cfg.max_len, cfg.length_penalty),
                                 ("cider",))["cider"]
               for k in ([cfg.beam] if cfg.beam else sorted(set(cfg.beam_choices)))}
    return max(by_beam, key=by_beam.get), by_beam


class MRNNTask:
    """The generator's part of the shared epoch loop (``training.run_epochs``): teacher forcing (xe) or
    self-critical sampling (scst); and its driver's."""

    name, config = "train-mrnn", MRNNConfig

    @staticmethod
    def stream(cfg: MRNNConfig) -> TrainStream:
        # the paper's model reads the whole image's row alone; attention reads the regions too
        return TrainStream(max_words=cfg.max_words, whole_image_only=not cfg.attention, snippets=cfg.snippets,
                           snippet_phrases=cfg.snippet_phrases, augment=tuple(cfg.augment))

    @staticmethod
    def check_checkpoints(cfg: MRNNConfig) -> None:
        for role, checkpoint in ([("init", cfg.init)] if cfg.init else []) + [("teacher", t) for t in cfg.teacher]:
            check_checkpoint(cfg, checkpoint, role)
        require_java()  # dev CIDEr every epoch: fail now, not after the first epoch

    load_best = staticmethod(load_generator)

    def __init__(self, spec: RunSpec):
        self.spec, self.cfg = spec, spec.cfg
        self.vocab, self.feature_dim = spec.vocab, spec.feature_dim

    def build_model(self) -> MRNN:
        return MRNN(model_args(self.cfg, len(self.vocab), self.feature_dim))

    def param_groups(self, model: MRNN) -> list[dict[str, Any]]:
        return [{"params": list(model.parameters())}]

    def rows_per_worker(self, world: int) -> int:
        self.rows = max(1, self.cfg.batch_size // (5 * world))  # images, five sentences each
        return self.rows

    def initialise(self, model: MRNN) -> None:
        if self.cfg.init:  # a local path or a storage URI
            model.load_state_dict(load_generator(storage.fetch(self.cfg.init))[0].state_dict())

    def prepare(self, rank: int, world: int) -> None:
        cfg, index = self.cfg, word_index(self.vocab)
        self.reward = self.teacher = None
        if cfg.objective == "scst":  # document frequencies from every train image's references, encoded as in training
            self.reward = CiderD(split_sentence_ids(cfg.features, "train", index, cfg.max_words))
        if cfg.teacher:  # every worker distils its own samples: each holds the teacher, frozen
            self.teacher = MRNNEnsemble([load_generator(storage.fetch(path))[0] for path in cfg.teacher]).eval()
            self.teacher.requires_grad_(False)
        if rank == 0:
            self.dev = load_split(cfg.features, "dev", index, cfg.max_words, not cfg.attention)
            self.dev_features = torch.from_numpy(self.dev["features"]).float()
            self.dev_tokens = torch.from_numpy(self.dev["tokens"]).long()

    def begin_epoch(self, plain: MRNN, epoch: int) -> None:
        pass

    def step(self, model, plain: MRNN, batch) -> tuple[torch.Tensor, dict[str, float]]:
        cfg = self.cfg
        if self.reward is not None:
            return self_critical_loss(model, batch["features"].float(), batch["tokens"].long(), self.reward,
                                      cfg.samples, plain.args.end, cfg.max_len, cfg.sample_temperature,
                                      self.teacher, cfg.distill)
        image_of, sentences = sentence_rows(batch["tokens"].long())
        inputs, targets = teacher_forcing(sentences, plain.args.end)
        logits, targets = model(batch["features"].float(), inputs, image_of=image_of, targets=targets)  # words only
        loss, words = token_nll(logits, targets, cfg.label_smoothing)
        # the logged train perplexity is of the model, whatever the loss smoothed
        nll = token_nll(logits.detach(), targets)[0] if cfg.label_smoothing else loss.detach()
        # mean over words: the step size does not depend on sentence lengths
        return loss / words, {"nll": nll.item(), "words": int(words)}
    def train_metrics(self, sums, steps: int, seconds: float, world: int) -> tuple[dict[str, float], str]:
        if self.reward is not None:
            metrics = {"train_sample_cider": sums["reward"] / max(steps, 1),
                       "images_per_s": steps * self.rows * world / seconds}
            distilled = ""
            if self.teacher is not None:
                metrics["train_distill"] = sums["distill"] / max(steps, 1)
                distilled = f", distill {metrics['train_distill']:.3f}"
            return metrics, (f"train sample CIDEr-D {metrics['train_sample_cider']:.3f}{distilled}, "
                             f"{metrics['images_per_s']:.1f} images/s")
        metrics = {"train_perplexity": perplexity_of(sums["nll"], sums["words"]),
                   "words_per_s": sums["words"] * world / seconds}
        return metrics, f"train ppl {metrics['train_perplexity']:.1f}, {metrics['words_per_s']:.0f} words/s"

    def evaluate(self, plain: MRNN) -> tuple[float, dict[str, float], str]:
        metrics = {"dev_perplexity": perplexity(plain, self.dev_features, self.dev_tokens)}
        greedy = generate(plain, self.dev_features, self.vocab, beam=1, max_len=self.cfg.max_len)
        metrics["dev_cider"] = score_captions(self.dev, greedy, ("cider",))["cider"]
        return metrics["dev_cider"], metrics, (f"dev ppl {metrics['dev_perplexity']:.1f}, dev CIDEr "
                                               f"{metrics['dev_cider']:.3f} (greedy), e.g. {greedy[0]!r}")

    @staticmethod
    def conclude(cfg: MRNNConfig, trained: Trained) -> dict[str, Any]:
        """The beam chosen on dev, the best-on-dev model captioning test once (scores, example captions with their
        images), then registered; the alias moves when it beats the holder's dev CIDEr on the same dev data."""
        model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
        manifest, vocab = trained.manifest, trained.manifest["vocab"]["words"]
        index = word_index(vocab)
        dev = load_split(cfg.features, "dev", index, cfg.max_words, not cfg.attention)
        beam, dev_by_beam = choose_beam(cfg, model, dev, vocab)
        write_best(final, model, state, beam=beam)
        mlflow.log_metrics({f"dev_cider_beam{k}": v for k, v in dev_by_beam.items()} | {"beam": beam})
        summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                                   "best_dev_cider_greedy": state["best"]["score"], "beam": beam,
                                   "dev_cider_by_beam": dev_by_beam, "checkpoint": storage.join(cfg.out, final.name),
                                   "last_epoch": trained.last_metrics}
        if cfg.test:
            test = load_split(cfg.features, "test", index, cfg.max_words, not cfg.attention)
            captions = generate(model, torch.from_numpy(test["features"]).float(), vocab, beam, cfg.max_len,
                                cfg.length_penalty)
            summary["test"] = {**score_captions(test, captions), **diversity(captions)}
            mlflow.log_metrics({f"test_{k}": v for k, v in summary["test"].items()})
            mlflow.log_dict({key: caption for key, caption in zip(test["image_ids"], captions)}, "test_captions.json")
            summary["examples"] = log_examples(manifest, test, captions, cfg.examples, cfg.features)
            print(f"train-mrnn: test (best dev epoch {state['best']['epoch']}, beam {beam}): "
                  f"{captions_line(summary['test'])}", flush=True)
        if not cfg.register_as:  # a registered model carries the checkpoint itself: logged once, not twice
            mlflow.log_artifact(str(final), artifact_path="checkpoint")
        else:
            summary["registered"] = log_captioner(final, cfg.register_as, manifest, beam, cfg.max_len,
                                                  cfg.length_penalty, dev_by_beam[beam], cfg.alias, dev_data_id(dev),
                                                  dataset_label(cfg.features))
        return summary
