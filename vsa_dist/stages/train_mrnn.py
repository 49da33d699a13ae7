"""``vsa train-mrnn``: the multimodal RNN generator, trained with Ray Train (DDP), selected on dev CIDEr.

    vsa train-mrnn --features runs/flickr8k/features                        # the paper: RNN cell, RMSprop
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

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from vsa_dist import config as cfglib
from vsa_dist import storage, training
from vsa_dist.checkpoints import read_checkpoint
from vsa_dist.data.pairs import load_split, split_sentence_ids, word_index
from vsa_dist.eval.captions import caption_metrics, require_java
from vsa_dist.eval.cider import CiderD
from vsa_dist.models.mrnn import MRNN, PAD, MRNNArgs, caption_ids, ids_to_words, teacher_forcing, token_nll


@dataclass
class MRNNConfig(training.TrainConfig):
    """Train the MRNN caption generator on feature shards (whole-image features, or all rows with attention, + sentences)."""

    epochs: int = field(default=20, metadata={"help": "passes over the train images, all their sentences each time", "range": "[1, inf)"})
    batch_size: int = field(default=100, metadata={"help": "image-sentence pairs per step over all workers (5 per image)", "range": "[1, inf)"})
    optimizer: str = field(default="rmsprop", metadata={"help": "rmsprop (the paper's choice for the generator), adam or sgd"})
    lr: float = field(default=1e-3, metadata={"help": "learning rate (chosen on dev)", "range": "(0, inf)"})
    max_words: int = field(default=20, metadata={"help": "longer training sentences are cut", "range": "[1, inf)"})
    label_smoothing: float = field(default=0.0, metadata={"help": "xe: share of each target spread over the vocabulary (0: the paper's plain cross-entropy)", "range": "[0, 1)"})
    experiment: str = field(default="vsa-mrnn", metadata={"help": "MLflow experiment"})
    register_as: str = field(default="vsa-captioner", metadata={"help": "registered model name; empty: do not register"})
    test: bool = field(default=True, metadata={"help": "caption test once at the end and score it"})
    cell: str = field(default="rnn", metadata={"help": "rnn (the paper's ReLU RNN) or lstm"})
    hidden: int = field(default=512, metadata={"help": "hidden units", "range": "[1, inf)"})
    word_dim: int = field(default=512, metadata={"help": "word vector size", "range": "[1, inf)"})
    feature_norm: str = field(default="rms", metadata={"help": "image features at unit length (unit) or unit RMS per component (rms)"})
    attention: bool = field(default=False, metadata={"help": "lstm: attend over the whole image and its regions at every word (beyond the paper)"})
    max_len: int = field(default=20, metadata={"help": "longest generated caption, in words", "range": "[1, inf)"})
    beam: int = field(default=0, metadata={"help": "beam size at test time; 0: choose from beam_choices on dev", "range": "[0, inf)"})
    beam_choices: list[int] = field(default_factory=lambda: [1, 2, 3, 5], metadata={"help": "beam sizes tried on dev"})
    length_penalty: float = field(default=0.0, metadata={"help": "beam ranking by log P / length**this (0: the paper)", "range": "[0, inf)"})
    alias: str = field(default="champion", metadata={"help": "alias moved to the new version when it beats the holder on dev"})
    examples: int = field(default=10, metadata={"help": "test images captioned into the example artifacts", "range": "[0, inf)"})
    snippets: str = field(default="", metadata={"help": "snippet folder (vsa align-snippets over train): train on full images and on regions with their snippets, the paper's region generator"})
    objective: str = field(default="xe", metadata={"help": "xe (cross-entropy, teacher forcing: the paper) or scst (self-critical: the CIDEr-D of sampled captions, from --init)"})
    init: str = field(default="", metadata={"help": "a generator checkpoint (best.pt) to start from; scst needs one"})
    samples: int = field(default=5, metadata={"help": "scst: captions sampled per image; each one's baseline is the mean reward of the others", "range": "[1, inf)"})

    def validate(self) -> None:
        self.validate_training(default_out="mrnn", min_batch=5)
        training.check_choice("cell", self.cell, ("rnn", "lstm"))
        training.check_choice("feature_norm", self.feature_norm, ("unit", "rms"))
        training.check_choice("objective", self.objective, ("xe", "scst"))
        if self.attention and (self.cell != "lstm" or self.snippets):
            raise cfglib.ConfigError("attention needs cell lstm and no snippets (a snippet's region is one row, "
                                     "nothing to attend over)")
        if self.objective == "scst" and not self.init:
            raise cfglib.ConfigError("objective scst needs --init, a checkpoint trained with xe (sampling from an "
                                     "untrained model earns no reward to learn from)")
        if self.objective == "scst" and (self.snippets or self.samples < 2):
            raise cfglib.ConfigError("objective scst needs samples >= 2 and no snippets (a region's snippets are "
                                     "not references for a whole caption)")
        if not self.beam_choices or min(self.beam_choices) < 1:
            raise cfglib.ConfigError("beam_choices must be a list of sizes >= 1")
        if self.snippets:
            from vsa_dist.data.shards import load_manifest

            try:
                snippets = load_manifest(self.snippets)
            except FileNotFoundError as err:
                raise cfglib.ConfigError(f"snippets: {err} (make it with vsa align-snippets)") from err
            if snippets.get("kind") != "snippets" or not snippets["splits"].get("train", {}).get("images"):
                raise cfglib.ConfigError(f"snippets {self.snippets}: not a snippet folder with train images")
        if self.init:
            self.check_init()
        require_java()  # dev CIDEr every epoch: fail now, not after the first epoch

    def check_init(self) -> None:
        """The --init checkpoint must be a generator of this shape over this feature folder's vocabulary."""
        from vsa_dist.features.format import load_features_manifest

        if not storage.exists(self.init):
            raise cfglib.ConfigError(f"init {self.init}: no such checkpoint")
        try:
            saved = read_checkpoint(storage.fetch(self.init))
        except cfglib.ConfigError as err:  # a folder, a truncated file, not a torch checkpoint: say which and why
            raise cfglib.ConfigError(f"init: {err}") from err
        config = {"feature_norm": "unit", "attention": False, **saved.get("config", {})}
        differ = [k for k in ("cell", "hidden", "word_dim", "feature_norm", "attention") if config.get(k) != getattr(self, k)]
        if differ:
            raise cfglib.ConfigError(f"init {self.init}: trained with a different " + ", ".join(
                f"{k} ({config.get(k)!r}, here {getattr(self, k)!r})" for k in differ))
        if saved.get("vocab") != load_features_manifest(self.features)["vocab"]["words"]:
            raise cfglib.ConfigError(f"init {self.init}: its vocabulary is not the one of {self.features}")



def model_args(cfg: MRNNConfig, vocab_size: int, feature_dim: int) -> MRNNArgs:
    """``vocab_size`` words → ids PAD, UNK, words, END."""
    return MRNNArgs(vocab_size=vocab_size + 3, feature_dim=feature_dim, hidden=cfg.hidden, word_dim=cfg.word_dim,
                    cell=cfg.cell, dropout=cfg.dropout, feature_norm=cfg.feature_norm, attention=cfg.attention)


def whole_image_only(config: dict[str, Any] | MRNNConfig) -> bool:
    """Whether a generator reads only each image's whole-image row (every one but an attending one)."""
    attention = config.get("attention", False) if isinstance(config, dict) else config.attention
    return not attention


def sentence_rows(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sentences [B, S, T] → (the image of each present sentence [N], the sentences [N, T']), cut to the
    longest sentence present (the recurrence costs per time step; short snippets would pay for T)."""
    present = (tokens != PAD).any(dim=-1)                               # [B, S]
    image_of = torch.arange(len(tokens), device=tokens.device)[:, None].expand_as(present)[present]
    rows = tokens[present]
    width = int((rows != PAD).sum(dim=1).max()) if len(rows) else 0
    return image_of, rows[:, :max(width, 1)]


@torch.no_grad()
def perplexity(model: MRNN, features: torch.Tensor, tokens: torch.Tensor, chunk: int = 500) -> float:
    """exp(mean NLL per word, END included) over every sentence of the split."""
    model.eval()
    image_of, sentences = sentence_rows(tokens)  # features indexed per chunk: a split's rows x regions is large
    total, count = 0.0, 0
    for start in range(0, len(sentences), chunk):
        inputs, targets = teacher_forcing(sentences[start:start + chunk], model.args.end)
        images = image_of[start:start + chunk]
        first = int(images[0])  # the chunk's sentences are of consecutive images: pass only those
        nll, n = token_nll(model(features[first:int(images[-1]) + 1], inputs, image_of=images - first), targets)
        total, count = total + float(nll), count + int(n)
    return math.exp(total / max(count, 1))


@torch.no_grad()
def generate(model: MRNN, features: torch.Tensor, vocab: list[str], beam: int, max_len: int,
             length_penalty: float = 0.0, chunk: int = 250) -> list[str]:
    """Captions for images [N, D] or [N, M, D] (whole image, regions); beam 1 is greedy."""
    model.eval()
    captions = []
    for start in range(0, len(features), chunk):
        part = features[start:start + chunk]
        ids = (model.greedy(part, max_len) if beam == 1
               else model.beam_search(part, beam, max_len, length_penalty))
        captions += [" ".join(words) for words in ids_to_words(ids, vocab, model.args.end)]
    return captions


def score_captions(split: dict[str, Any], captions: list[str], metrics: tuple[str, ...] | None = None) -> dict[str, float]:
    references = {key: refs for key, refs in zip(split["image_ids"], split["references"])}
    candidates = dict(zip(split["image_ids"], captions))
    return caption_metrics(references, candidates, *(() if metrics is None else (metrics,)))


def self_critical_loss(model: torch.nn.Module, features: torch.Tensor, tokens: torch.Tensor, reward: CiderD,
                       samples: int, end: int, max_len: int) -> tuple[torch.Tensor, float]:
    """Self-critical sequence training (Rennie et al. 2017) with the mean-of-the-others baseline (Luo 2020):
    ``samples`` captions drawn per image, each rewarded by its CIDEr-D against the image's references, and
    pushed up or down by how much it beats the image's other samples; no greedy decode is needed.
    Images [B, D], their sentences [B, S, T] → (loss, mean reward of the samples)."""
    ids, log_probs = model(features.repeat_interleave(samples, dim=0), sample_len=max_len)
    references = [reward.references([r for r in caption_ids(image, end) if r]) for image in tokens]
    scores = torch.tensor([reward.score(caption, references[i // samples])
                           for i, caption in enumerate(caption_ids(ids, end))], device=log_probs.device)
    scores = scores.view(-1, samples)
    advantage = scores - (scores.sum(dim=1, keepdim=True) - scores) / (samples - 1)
    return -(advantage.view(-1) * log_probs.sum(dim=1)).mean(), scores.mean().item()


def train_loop(loop_config: dict[str, Any]) -> None:
    """Runs on every Ray Train worker: load checkpoint → epochs of steps → report (rank 0: eval, log)."""
    import ray.train
    import ray.train.torch

    cfg = MRNNConfig(**loop_config["cfg"])
    vocab, feature_dim = loop_config["vocab"], loop_config["feature_dim"]
    rank, world, device = training.worker_setup(cfg)

    model = MRNN(model_args(cfg, len(vocab), feature_dim))
    optimizer = training.make_optimizer(cfg.optimizer, model, cfg.lr, cfg.momentum, cfg.weight_decay)
    start_epoch, best = training.restore(model, optimizer)
    if start_epoch == 1 and cfg.init:
        model.load_state_dict(load_model(storage.fetch(cfg.init))[0].state_dict())  # a local path or a storage URI
    model = ray.train.torch.prepare_model(model)
    plain = model.module if hasattr(model, "module") else model
    train_shard = ray.train.get_dataset_shard("train")
    images_per_worker = max(1, cfg.batch_size // (5 * world))
    # with read-ahead, the first epoch's shards are read while rank 0 loads dev (and SCST counts the references)
    streams = training.epoch_streams(train_shard, cfg, images_per_worker, device, start=start_epoch <= cfg.epochs)

    logger = None
    if rank == 0:  # the one rank that evaluates, logs and writes checkpoints
        from mlflow.tracking import MlflowClient

        logger = MlflowClient(loop_config["tracking_uri"])
        dev = load_split(cfg.features, "dev", word_index(vocab), cfg.max_words, whole_image_only(cfg))
        dev_features, dev_tokens = torch.from_numpy(dev["features"]).float(), torch.from_numpy(dev["tokens"]).long()

    reward = None
    if cfg.objective == "scst":  # document frequencies from every train image's references, as training encodes them
        reward = CiderD(split_sentence_ids(cfg.features, "train", word_index(vocab), cfg.max_words))
    for epoch in range(start_epoch, cfg.epochs + 1):
        model.train()
        lr = training.epoch_lr(cfg.lr, cfg.lr_schedule, epoch, cfg.epochs)
        training.set_lr(optimizer, lr)
        total_nll, total_words, total_reward, steps = 0.0, 0, 0.0, 0
        clock = training.DataClock(streams.take())
        for batch in clock:
            optimizer.zero_grad(set_to_none=True)
            if reward is None:
                image_of, sentences = sentence_rows(batch["tokens"].long())
                inputs, targets = teacher_forcing(sentences, plain.args.end)
                logits = model(batch["features"].float(), inputs, image_of=image_of)
                loss, words = token_nll(logits, targets, cfg.label_smoothing)
                (loss / words).backward()  # mean over words: the step size does not depend on sentence lengths
                # the logged train perplexity is of the model, whatever the loss smoothed
                nll = token_nll(logits.detach(), targets)[0] if cfg.label_smoothing else loss.detach()
                total_nll, total_words = total_nll + nll.item(), total_words + int(words)
            else:
                loss, mean_reward = self_critical_loss(model, batch["features"].float(), batch["tokens"].long(),
                                                       reward, cfg.samples, plain.args.end, cfg.max_len)
                loss.backward()
                total_reward += mean_reward
            torch.nn.utils.clip_grad_value_(model.parameters(), cfg.clip)
            optimizer.step()
            steps += 1
        timing = clock.metrics()
        if epoch < cfg.epochs:
            streams.start_next()  # with read-ahead, its first shards are read while rank 0 scores dev
        seconds = timing.pop("seconds")
        metrics: dict[str, Any] = {"epoch": epoch, "lr": lr, "steps": steps, **timing}
        if reward is None:
            metrics |= {"train_perplexity": math.exp(total_nll / max(total_words, 1)),
                        "words_per_s": total_words * world / seconds}
        else:
            metrics |= {"train_sample_cider": total_reward / max(steps, 1),
                        "images_per_s": steps * images_per_worker * world / seconds}
        state = None
        if rank == 0:
            with training.all_cores(cfg.threads):
                metrics["dev_perplexity"] = perplexity(plain, dev_features, dev_tokens)
                greedy = generate(plain, dev_features, vocab, beam=1, max_len=cfg.max_len)
            metrics["dev_cider"] = score_captions(dev, greedy, ("cider",))["cider"]
            best, state = training.end_epoch(loop_config, logger, metrics, metrics["dev_cider"], best, plain, optimizer)
            train = (f"train ppl {metrics['train_perplexity']:.1f}" if reward is None
                     else f"train sample CIDEr-D {metrics['train_sample_cider']:.3f}")
            speed = (f"{metrics['words_per_s']:.0f} words/s" if reward is None
                     else f"{metrics['images_per_s']:.1f} images/s")
            training.say(f"epoch {epoch}: {train}, dev ppl {metrics['dev_perplexity']:.1f}, "
                         f"dev CIDEr {metrics['dev_cider']:.3f} (greedy), e.g. {greedy[0]!r}; "
                         f"{speed}, data wait {100 * metrics['data_wait_share']:.1f}% "
                         f"({metrics['first_batch_wait_s']:.1f} s of it for the first batch)")
        training.report(metrics, state)


def load_model(path: Path | str) -> tuple[MRNN, dict[str, Any]]:
    """The best-on-dev generator of a checkpoint (``torch.load(weights_only=True)``) and its metadata."""
    state = read_checkpoint(path)
    saved = {"feature_norm": "unit", **state["config"]}  # checkpoints from before feature_norm used unit length
    cfg = MRNNConfig(**{k: v for k, v in saved.items() if k in MRNNConfig.__dataclass_fields__})
    model = MRNN(model_args(cfg, len(state["vocab"]), state["feature_dim"]))
    model.load_state_dict(state["best"]["state"] or state["model"])
    return model.eval(), state


def choose_beam(cfg: MRNNConfig, model: MRNN, dev: dict[str, Any], vocab: list[str]) -> tuple[int, dict[int, float]]:
    """The test-time beam size (the configured one, or the dev-CIDEr best of ``beam_choices``) and the dev
    CIDEr of each size tried."""
    features = torch.from_numpy(dev["features"]).float()
    by_beam = {k: score_captions(dev, generate(model, features, vocab, k, cfg.max_len, cfg.length_penalty), ("cider",))["cider"]
               for k in ([cfg.beam] if cfg.beam else sorted(set(cfg.beam_choices)))}
    return max(by_beam, key=by_beam.get), by_beam


def run(cfg: MRNNConfig) -> dict[str, Any]:
    import mlflow

    trained = training.train(cfg, "train-mrnn", train_loop, load_model, whole_image_only(cfg))
    model, state, final, run_id = trained.model, trained.state, trained.checkpoint, trained.run_id
    manifest, vocab = trained.manifest, trained.manifest["vocab"]["words"]

    index = word_index(vocab)
    dev = load_split(cfg.features, "dev", index, cfg.max_words, whole_image_only(cfg))
    beam, dev_by_beam = choose_beam(cfg, model, dev, vocab)
    training.write_best(final, model, state, beam=beam)
    mlflow.log_metrics({f"dev_cider_beam{k}": v for k, v in dev_by_beam.items()} | {"beam": beam})
    summary: dict[str, Any] = {"run_id": run_id, "best_dev_epoch": state["best"]["epoch"],
                               "best_dev_cider_greedy": state["best"]["score"], "beam": beam,
                               "dev_cider_by_beam": dev_by_beam, "checkpoint": storage.join(cfg.out, final.name),
                               "last_epoch": trained.last_metrics}
    if cfg.test:
        from vsa_dist.examples import log_examples

        test = load_split(cfg.features, "test", index, cfg.max_words, whole_image_only(cfg))
        captions = generate(model, torch.from_numpy(test["features"]).float(), vocab, beam, cfg.max_len,
                            cfg.length_penalty)
        summary["test"] = score_captions(test, captions)
        mlflow.log_metrics({f"test_{k}": v for k, v in summary["test"].items()})
        mlflow.log_dict({key: caption for key, caption in zip(test["image_ids"], captions)}, "test_captions.json")
        summary["examples"] = log_examples(manifest, test, captions, cfg.examples, cfg.features)
        print(f"train-mrnn: test (best dev epoch {state['best']['epoch']}, beam {beam}): "
              f"{json.dumps({k: round(v, 4) for k, v in summary['test'].items()})}", flush=True)
    mlflow.log_artifact(str(final), artifact_path="checkpoint")
    if cfg.register_as:
        from vsa_dist.serving import dev_data_id, log_captioner

        summary["registered"] = log_captioner(final, cfg.register_as, manifest, beam, cfg.max_len,
                                              cfg.length_penalty, dev_by_beam[beam], cfg.alias, dev_data_id(dev))
    return training.finish(cfg, "train-mrnn", trained, summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    return cfglib.run_stage(MRNNConfig, run, argv, prog="vsa train-mrnn", preset="train_mrnn")
