"""``vsa train-mrnn``: the multimodal RNN generator, trained with Ray Train (DDP), selected on dev CIDEr.

    vsa train-mrnn --features runs/flickr8k/features                        # the paper's RNN (Adam: dev chose it)
    vsa train-mrnn --features runs/flickr8k/features --preset train_mrnn_modern   # LSTM, Adam, cosine
    vsa train-mrnn --features runs/flickr8k/features --resume               # continue the last run
    vsa train-mrnn --features runs/flickr8k/features --preset train_mrnn_scst \
        --init runs/flickr8k/mrnn/best.pt --out runs/flickr8k/mrnn-scst       # self-critical, on CIDEr-D

Per epoch every worker streams its share of the train images (Ray Data, shuffled) and learns every
sentence of each image by teacher forcing; rank 0 then measures dev perplexity and the CIDEr of greedy
captions on dev, keeps the best model, logs to MLflow and reports a checkpoint. At the end the beam
size is chosen on dev, the best model captions test once (BLEU, METEOR, ROUGE-L, CIDEr), example
captions with their images go to MLflow, and the model is registered as ``vsa-captioner``; the alias
``champion`` moves to it when it beats the champion's dev CIDEr on the same dev data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vsa_dist import config as cfglib
from vsa_dist import storage, training
from vsa_dist.config import option

# torch and the model are imported where they are used, not here: `vsa train-mrnn --help` needs only the config
if TYPE_CHECKING:
    import torch

    from vsa_dist.models.mrnn import MRNN, MRNNArgs


@dataclass
class MRNNConfig(training.TrainConfig):
    """Train the MRNN caption generator on feature shards (whole-image features, or all rows with attention, and
    the sentences)."""

    epochs: int = option(20, "passes over the train images, all their sentences each time", range="[1, inf)")
    batch_size: int = option(100, "image-sentence pairs per step over all workers (5 per image)", range="[1, inf)")
    optimizer: str = option("rmsprop", "rmsprop (the paper's choice for the generator), adam or sgd",
                            choices=training.OPTIMIZERS)
    lr: float = option(1e-3, "learning rate (chosen on dev)", range="(0, inf)")
    max_words: int = option(20, "longer training sentences are cut", range="[1, inf)")
    label_smoothing: float = option(0.0, "xe: share of each target spread over the vocabulary (0: the paper's plain "
                                         "cross-entropy)", range="[0, 1)")
    experiment: str = option("vsa-mrnn", "MLflow experiment")
    register_as: str = option("vsa-captioner", "registered model name; empty: do not register")
    test: bool = option(True, "caption test once at the end and score it")
    cell: str = option("rnn", "rnn (the paper's ReLU RNN) or lstm", choices=("rnn", "lstm"))
    hidden: int = option(512, "hidden units", range="[1, inf)")
    word_dim: int = option(512, "word vector size", range="[1, inf)")
    feature_norm: str = option("rms", "image features at unit length (unit) or unit RMS per component (rms)",
                               choices=("unit", "rms"))
    attention: bool = option(False, "lstm: attend over the whole image and its regions at every word (beyond the "
                                    "paper)")
    max_len: int = option(20, "longest generated caption, in words", range="[1, inf)")
    beam: int = option(0, "beam size at test time; 0: choose from beam_choices on dev", range="[0, inf)")
    beam_choices: list[int] = option([1, 2, 3, 5], "beam sizes tried on dev")
    length_penalty: float = option(0.0, "beam ranking by log P / length**this (0: the paper)", range="[0, inf)")
    alias: str = option("champion", "alias moved to the new version when it beats the holder on dev")
    examples: int = option(10, "test images captioned into the example artifacts", range="[0, inf)")
    snippets: str = option("", "snippet folder (vsa align-snippets over train): train on full images and on regions "
                               "with their snippets, the paper's region generator")
    snippet_phrases: bool = option(True, "with snippets: cut each to a phrase, without the words it cannot end on "
                                         "('a man in' -> 'a man'), so that region captions do not end on them either "
                                         "(the paper preset trains on the snippets as the MRF cut them)")
    augment: list[str] = option([], "more feature folders of the same train images made another way (vsa features "
                                    "--flip: mirrored): each one's train split joins every epoch, so an epoch sees "
                                    "each train image once per folder (beyond the paper)")
    objective: str = option("xe", "xe (cross-entropy, teacher forcing: the paper) or scst (self-critical: the CIDEr-D "
                                  "of sampled captions, from --init)", choices=("xe", "scst"))
    init: str = option("", "a generator checkpoint (best.pt) to start from; scst needs one")
    samples: int = option(5, "scst: captions sampled per image; each one's baseline is the mean reward of the others",
                             range="[1, inf)")
    sample_temperature: float = option(1.0, "scst: draw the samples from softmax(logits / this); below 1 they are the "
                                            "greedy caption's neighbours, not the long tail", range="(0, inf)")
    teacher: list[str] = option([], "scst: generator checkpoints decoded as one (an ensemble, as vsa eval captions "
                                    "--ensemble) whose next-word distributions the samples are pulled toward, by "
                                    "--distill (beyond the paper: one model learns what the ensemble knows)")
    distill: float = option(0.0, "scst with --teacher: weight of the distillation term (the teacher-to-student "
                                 "cross-entropy summed over a sample's words) beside the self-critical loss",
                            range="[0, inf)")

    def validate(self) -> None:
        self.validate_training(default_out="mrnn", min_batch=5, paths=("init", "snippets", "teacher", "augment"))
        if self.attention and (self.cell != "lstm" or self.snippets):
            raise cfglib.ConfigError("attention needs cell lstm and no snippets (a snippet's region is one row, "
                                     "nothing to attend over)")
        if self.objective == "scst" and not self.init:
            raise cfglib.ConfigError("objective scst needs --init, a checkpoint trained with xe (sampling from an "
                                     "untrained model earns no reward to learn from)")
        if self.objective == "scst" and (self.snippets or self.samples < 2):
            raise cfglib.ConfigError("objective scst needs samples >= 2 and no snippets (a region's snippets are "
                                     "not references for a whole caption)")
        if bool(self.teacher) != bool(self.distill) or (self.teacher and self.objective != "scst"):
            raise cfglib.ConfigError("--teacher and --distill go together, with objective scst (the teacher is "
                                     "distilled on the self-critical samples)")
        if not self.beam_choices or min(self.beam_choices) < 1:
            raise cfglib.ConfigError("beam_choices must be a list of sizes >= 1")

    def check_inputs(self) -> None:
        super().check_inputs()
        if self.snippets:
            from vsa_dist.data.shards import load_manifest

            try:
                snippets = load_manifest(self.snippets)
            except FileNotFoundError as err:
                raise cfglib.ConfigError(f"snippets: {err} (make it with vsa align-snippets)") from err
            if snippets.get("kind") != "snippets" or not snippets["splits"].get("train", {}).get("images"):
                raise cfglib.ConfigError(f"snippets {self.snippets}: not a snippet folder with train images")
        if self.augment and self.snippets:
            raise cfglib.ConfigError("augment: not with snippets (the snippet folder is the train stream)")
        for folder in self.augment:
            check_augment_folder(self.features, folder)
        for role, checkpoint in ([("init", self.init)] if self.init else []) + [("teacher", t) for t in self.teacher]:
            self.check_init(checkpoint, role)
        from vsa_dist.eval.captions import require_java

        require_java()  # dev CIDEr every epoch: fail now, not after the first epoch

    def check_init(self, checkpoint: str, role: str) -> None:
        """An --init or --teacher checkpoint must be a generator over this feature folder's vocabulary, and one of
        this shape for --init."""
        from vsa_dist.features.format import load_features_manifest

        if not storage.exists(checkpoint):
            raise cfglib.ConfigError(f"{role} {checkpoint}: no such checkpoint")
        try:
            from vsa_dist.checkpoints import read_checkpoint

            saved = read_checkpoint(storage.fetch(checkpoint))
        except cfglib.ConfigError as err:  # a folder, a truncated file, not a torch checkpoint: say which and why
            raise cfglib.ConfigError(f"{role}: {err}") from err
        if saved.get("vocab") != load_features_manifest(self.features)["vocab"]["words"]:
            raise cfglib.ConfigError(f"{role} {checkpoint}: its vocabulary is not the one of {self.features}")
        if role == "teacher":  # any generator over these words can teach, whatever its shape
            return
        config = {"feature_norm": "unit", "attention": False, **saved.get("config", {})}
        differ = [
            k for k in ("cell", "hidden", "word_dim", "feature_norm", "attention") if config.get(k) != getattr(self, k)
        ]
        if differ:
            raise cfglib.ConfigError(f"init {self.init}: trained with a different " + ", ".join(
                f"{k} ({config.get(k)!r}, here {getattr(self, k)!r})" for k in differ))



def check_augment_folder(features: str, folder: str) -> None:
    """An --augment folder must hold the train split of the same images, over the same vocabulary, with features
    made by the same CNN and regions (only how the images were shown may differ)."""
    from vsa_dist.features.format import FeatureSettingsMismatch, check_same_settings, load_features_manifest

    try:
        extra, main = load_features_manifest(folder), load_features_manifest(features)
        check_same_settings({features: main, folder: extra})
    except (FileNotFoundError, ValueError, FeatureSettingsMismatch) as err:
        raise cfglib.ConfigError(f"augment: {err}") from err
    if extra["vocab"]["words"] != main["vocab"]["words"]:
        raise cfglib.ConfigError(f"augment {folder}: its vocabulary is not the one of {features}")
    images = [manifest["splits"].get("train", {}).get("images") for manifest in (extra, main)]
    if images[0] != images[1]:
        raise cfglib.ConfigError(f"augment {folder}: {images[0]} train images, not the {images[1]} of {features} "
                                 "(make it from the same image shards, with --splits train)")


def model_args(cfg: MRNNConfig, vocab_size: int, feature_dim: int) -> MRNNArgs:
    """``vocab_size`` words → ids PAD, UNK, words, END."""
    from vsa_dist.models.mrnn import MRNNArgs

    return MRNNArgs(vocab_size=vocab_size + 3, feature_dim=feature_dim, hidden=cfg.hidden, word_dim=cfg.word_dim,
                    cell=cfg.cell, dropout=cfg.dropout, feature_norm=cfg.feature_norm, attention=cfg.attention)


class MRNNTask:
    """The generator's part of the shared epoch loop (``training.run_epochs``): teacher forcing (xe) or
    self-critical sampling (scst)."""

    name = "train-mrnn"

    def __init__(self, spec: training.RunSpec):
        self.spec, self.cfg = spec, spec.cfg
        self.vocab, self.feature_dim = spec.vocab, spec.feature_dim

    def build_model(self) -> MRNN:
        from vsa_dist.models.mrnn import MRNN

        return MRNN(model_args(self.cfg, len(self.vocab), self.feature_dim))

    def rows_per_worker(self, world: int) -> int:
        self.rows = max(1, self.cfg.batch_size // (5 * world))  # images, five sentences each
        return self.rows

    def initialise(self, model: MRNN) -> None:
        if self.cfg.init:  # a local path or a storage URI
            from vsa_dist.checkpoints import load_generator

            model.load_state_dict(load_generator(storage.fetch(self.cfg.init))[0].state_dict())

    def prepare(self, rank: int, world: int) -> None:
        import torch

        from vsa_dist.data.pairs import load_split, split_sentence_ids, word_index
        from vsa_dist.eval.cider import CiderD

        cfg, index = self.cfg, word_index(self.vocab)
        self.reward = self.teacher = None
        if cfg.objective == "scst":  # document frequencies from every train image's references, encoded as in training
            self.reward = CiderD(split_sentence_ids(cfg.features, "train", index, cfg.max_words))
        if cfg.teacher:  # every worker distils its own samples: each holds the teacher, frozen
            from vsa_dist.checkpoints import load_generator
            from vsa_dist.models.mrnn import MRNNEnsemble

            self.teacher = MRNNEnsemble([load_generator(storage.fetch(path))[0] for path in cfg.teacher]).eval()
            self.teacher.requires_grad_(False)
        if rank == 0:
            self.dev = load_split(cfg.features, "dev", index, cfg.max_words, not cfg.attention)
            self.dev_features = torch.from_numpy(self.dev["features"]).float()
            self.dev_tokens = torch.from_numpy(self.dev["tokens"]).long()

    def begin_epoch(self, plain: MRNN, epoch: int) -> None:
        pass

    def step(self, model, plain: MRNN, batch) -> tuple[torch.Tensor, dict[str, float]]:
        from vsa_dist.models.mrnn import self_critical_loss, sentence_rows, teacher_forcing, token_nll

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
        from vsa_dist.eval.captions import perplexity_of

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
        from vsa_dist.eval.captions import perplexity, score_captions
        from vsa_dist.models.mrnn import generate

        metrics = {"dev_perplexity": perplexity(plain, self.dev_features, self.dev_tokens)}
        greedy = generate(plain, self.dev_features, self.vocab, beam=1, max_len=self.cfg.max_len)
        metrics["dev_cider"] = score_captions(self.dev, greedy, ("cider",))["cider"]
        return metrics["dev_cider"], metrics, (f"dev ppl {metrics['dev_perplexity']:.1f}, dev CIDEr "
                                               f"{metrics['dev_cider']:.3f} (greedy), e.g. {greedy[0]!r}")


CONFIG, TASK = MRNNConfig, MRNNTask  # what vsa tune drives


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker."""
    training.run_epochs(MRNNTask(loop_config["spec"]))


def choose_beam(cfg: MRNNConfig, model: MRNN, dev: dict[str, Any], vocab: list[str]) -> tuple[int, dict[int, float]]:
    """The test-time beam size (the configured one, or the dev-CIDEr best of ``beam_choices``) and the dev
    CIDEr of each size tried."""
    import torch

    from vsa_dist.eval.captions import score_captions
    from vsa_dist.models.mrnn import generate

    features = torch.from_numpy(dev["features"]).float()
    by_beam = {
        k: score_captions(dev, generate(model, features, vocab, k, cfg.max_len, cfg.length_penalty), ("cider",))[
            "cider"
        ]
        for k in ([cfg.beam] if cfg.beam else sorted(set(cfg.beam_choices)))
    }
    return max(by_beam, key=by_beam.get), by_beam


def run(cfg: MRNNConfig) -> dict[str, Any]:
    import mlflow
    import torch

    from vsa_dist.checkpoints import load_generator
    from vsa_dist.data.pairs import load_split, word_index
    from vsa_dist.eval.captions import captions_line, diversity, score_captions
    from vsa_dist.models.mrnn import generate

    trained = training.train(cfg, "train-mrnn", train_loop, load_generator, not cfg.attention)
    model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
    manifest, vocab = trained.manifest, trained.manifest["vocab"]["words"]

    index = word_index(vocab)
    dev = load_split(cfg.features, "dev", index, cfg.max_words, not cfg.attention)
    beam, dev_by_beam = choose_beam(cfg, model, dev, vocab)
    training.write_best(final, model, state, beam=beam)
    mlflow.log_metrics({f"dev_cider_beam{k}": v for k, v in dev_by_beam.items()} | {"beam": beam})
    summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                               "best_dev_cider_greedy": state["best"]["score"], "beam": beam,
                               "dev_cider_by_beam": dev_by_beam, "checkpoint": storage.join(cfg.out, final.name),
                               "last_epoch": trained.last_metrics}
    if cfg.test:
        from vsa_dist.examples import log_examples

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
        from vsa_dist.serving import dev_data_id, log_captioner

        summary["registered"] = log_captioner(final, cfg.register_as, manifest, beam, cfg.max_len,
                                              cfg.length_penalty, dev_by_beam[beam], cfg.alias, dev_data_id(dev))
    return training.finish(cfg, "train-mrnn", trained, summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return cfglib.run_stage(MRNNConfig, run, argv, prog="vsa train-mrnn", preset="train_mrnn")
