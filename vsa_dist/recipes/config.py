"""The two training stages' configs: what each trains on, how, and (inherited from ``models/args.py``, declared
there once) the model it builds; and the config of ``vsa tune``, which drives them. No torch here: ``vsa train-align
--help`` reads these alone."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.config import option
from vsa_dist.data.manifests import image_shards, load_features_manifest, load_manifest, trained_cnn_file
from vsa_dist.models.args import TRAINABLE_BACKBONES, AlignmentSettings, MRNNSettings, reads_regions
from vsa_dist.training.config import LR_SCHEDULES, OPTIMIZERS, TrainConfig

ENCODER_MODES = ("frozen", "cached", "full")


@dataclass
class AlignConfig(TrainConfig, AlignmentSettings):
    """Train the alignment model (BRNN + region embeddings) on feature shards."""

    PRESET: ClassVar[str] = "train_align"  # the paper's settings (the file names them: they are these defaults)

    epochs: int = option(20, "passes over the train images (one sentence per image per pass)", range="[1, inf)")
    weight_decay: float = option(1e-4, "L2 weight decay (chosen on dev)", range="[0, inf)")
    lr_schedule: str = option("cosine", "constant, or cosine: decay to 0 over the planned epochs; the paper gives "
                                        "none, and at a constant 1e-4 dev stalled from the second epoch "
                                        "(docs/alignment.md)", choices=LR_SCHEDULES)
    experiment: str = option("vsa-align", "MLflow experiment")
    register_as: str = option("vsa-align", "registered model name; empty: do not register")
    alias: str = option("champion", "alias moved to the new version when it beats the holder on dev (R@1+5+10 sum)")
    hardest_warmup_epochs: int = option(0, "with hardest_negative: all negatives for this many epochs first (VSE++'s "
                                           "warm-up; from scratch the hardest alone collapsed here)", range="[0, inf)")
    all_sentences: bool = option(False, "each image brings all its sentences to a step, each a positive pair (a pass "
                                        "covers every pair; an image's other sentences are not its negatives; "
                                        "batch_size then counts images); false: one drawn per image per pass (paper)")
    gather_negatives: bool = option(True, "with N workers, rank against the whole batch's pairs (the paper's batch), "
                                          "not each worker's share")
    encoder: str = option("frozen", "the image CNN: frozen (the feature folder's vectors, as in the paper), cached "
                                    "(FEATURES is a trunk folder, vsa features --trunk-block N: the CNN's blocks from "
                                    "N on train with the model, on the whole image) or full (the whole CNN trains, "
                                    "from the images of the shards the feature folder was made from, decoded and "
                                    "augmented in Ray Data: the GPU path); models/encoder.py",
                          choices=ENCODER_MODES)
    cnn_train_from: int = option(0, "encoder cached or full: train the blocks from this one on (cached: 0 or below "
                                    "the trunk block means from the trunk block; full: 0 trains the stem too); the "
                                    "blocks below stay pretrained", range="[0, inf)")
    cnn_lr: float = option(1e-4, "encoder cached or full: the CNN blocks' learning rate (on lr's schedule)",
                           range="[0, inf)")
    cnn_weight_decay: float = option(0.0, "encoder cached or full: the CNN blocks' weight decay", range="[0, inf)")
    cnn_batchnorm: str = option("frozen", "encoder cached or full: BatchNorm keeps the pretrained statistics (frozen) "
                                          "or learns them from each worker's batches (train)",
                                choices=("frozen", "train"))
    cnn_frozen_epochs: int = option(0, "encoder cached or full: the CNN blocks stay as pretrained for this many "
                                       "epochs first while the rest learns", range="[0, inf)")
    crop_min_area: float = option(1.0, "encoder full: each train image is a random crop of at least this share of its "
                                       "area, aspect 3/4 to 4/3, resized to the CNN's input (1: the whole image, as "
                                       "dev and test see it)", range="(0, 1]")
    image_flip: bool = option(True, "encoder full: mirror each train image left to right at random")
    image_decoders: int = option(2, "encoder full: Ray Data tasks decoding and augmenting JPEGs at once (a GPU worker "
                                    "needs several: benchmarks/image_stream.py measures images/s)", range="[1, inf)")

    def validate(self) -> None:
        self.validate_training(default_out="align", min_batch=2)
        if self.encoder != "frozen" and reads_regions(self):
            raise cfglib.ConfigError(f"encoder {self.encoder} trains on the whole image: score it alone (regions "
                                     "false, or local_weight 0 with a global term)")
        if self.encoder == "full" and self.augment:
            raise cfglib.ConfigError("encoder full augments the images themselves (crop_min_area, image_flip): "
                                     "no --augment folders")
        if self.local_pooling == "attention" and not self.cosine:
            raise cfglib.ConfigError("local_pooling=attention scores cosines: set cosine=true")
        if not self.local_weight and not self.global_weight:
            raise cfglib.ConfigError("local_weight and global_weight are both 0: nothing would score")


    def check_inputs(self) -> None:
        """A trunk folder for the cached encoder, a folder of vectors for the others; for the full one, the image
        shards that folder was made from, as they were, and a CNN that can train."""
        super().check_inputs()
        settings = load_features_manifest(self.features)["settings"]
        trunk = settings.get("trunk_block")
        if self.encoder == "full":
            if settings["backbone"] not in TRAINABLE_BACKBONES:
                raise cfglib.ConfigError(f"features {self.features}: made with {settings['backbone']}; encoder full "
                                         f"trains one of {', '.join(TRAINABLE_BACKBONES)}")
            try:
                image_shards(self.features)
            except (ValueError, FileNotFoundError) as err:
                raise cfglib.ConfigError(str(err)) from err
        if (self.encoder == "cached") != bool(trunk):
            raise cfglib.ConfigError(
                f"features {self.features}: trunk maps (block {trunk}) need --encoder cached" if trunk else
                f"features {self.features}: encoder cached needs a trunk folder (vsa features --trunk-block N)")


@dataclass
class MRNNConfig(TrainConfig, MRNNSettings):
    """Train the MRNN caption generator on feature shards (whole-image features, or all rows with attention, and
    the sentences). The defaults are the paper's generator as dev chose its settings (docs/generation.md, "The paper
    preset, setting by setting"): its equations, with Adam, dropout 0.25 and 10 epochs."""

    PRESET: ClassVar[str] = "train_mrnn"

    epochs: int = option(10, "passes over the train images, all their sentences each time; the paper preset's dev "
                             "CIDEr peaked at epoch 7 of 15 while dev perplexity rose after 6", range="[1, inf)")
    batch_size: int = option(100, "image-sentence pairs per step over all workers (5 per image)", range="[1, inf)")
    optimizer: str = option("adam", "adam, rmsprop or sgd; the paper found RMSprop best, here Adam reached dev CIDEr "
                                    "32.8 at full length against 23.5", choices=OPTIMIZERS)
    lr: float = option(1e-3, "learning rate (chosen on dev)", range="(0, inf)")
    max_words: int = option(20, "longer training sentences are cut", range="[1, inf)")
    label_smoothing: float = option(0.0, "xe: share of each target spread over the vocabulary (0: the paper's plain "
                                         "cross-entropy)", range="[0, 1)")
    experiment: str = option("vsa-mrnn", "MLflow experiment")
    register_as: str = option("vsa-captioner", "registered model name; empty: do not register")
    test: bool = option(True, "caption test once at the end and score it")
    max_len: int = option(20, "longest generated caption, in words", range="[1, inf)")
    beam: int = option(0, "beam size at test time; 0: choose from beam_choices on dev", range="[0, inf)")
    beam_choices: list[int] = option([1, 2, 3, 5], "beam sizes tried on dev")
    length_penalty: float = option(0.0, "beam ranking by log P / length**this (0: the paper)", range="[0, inf)")
    alias: str = option("champion", "alias moved to the new version when it beats the holder on dev")
    examples: int = option(10, "test images captioned into the example artifacts", range="[0, inf)")
    snippets: str = option("", "snippet folder (vsa align-snippets over train): train on full images and on regions "
                               "with their snippets, the paper's region generator")
    snippet_phrases: bool = option(False, "with snippets: cut each to a phrase, without the words it cannot end on "
                                          "('a man in' -> 'a man'), so that region captions do not end on them either "
                                          "(beyond the paper, which trains on the snippets as the MRF cut them; the "
                                          "modern presets cut them)")
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
        self.validate_training(default_out="mrnn", min_batch=5, paths=("init", "snippets", "teacher"))
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
        if self.augment and self.snippets:
            raise cfglib.ConfigError("augment: not with snippets (the snippet folder is the train stream)")

    def check_inputs(self) -> None:
        """The folders it names (the checkpoints it starts from or distils are checked by the recipe, which reads
        them with torch: ``MRNNTask.check_checkpoints``)."""
        super().check_inputs()
        if self.snippets:
            try:
                snippets = load_manifest(self.snippets)
            except FileNotFoundError as err:
                raise cfglib.ConfigError(f"snippets: {err} (make it with vsa align-snippets)") from err
            if snippets.get("kind") != "snippets" or not snippets["splits"].get("train", {}).get("images"):
                raise cfglib.ConfigError(f"snippets {self.snippets}: not a snippet folder with train images")
        features = load_features_manifest(self.features)
        if self.register_as and features["settings"].get("cnn_sha256"):
            try:  # the registered captioner carries the CNN its features came from: it must be there, unchanged
                trained_cnn_file(features)
            except ValueError as err:
                raise cfglib.ConfigError(f"features {self.features}: {err} (or --register-as '')") from err
        for checkpoint in [self.init, *self.teacher]:
            if checkpoint and not storage.exists(checkpoint):
                raise cfglib.ConfigError(f"{'init' if checkpoint == self.init else 'teacher'} {checkpoint}: no such "
                                         "checkpoint")


@dataclass
class TuneConfig(cfglib.Config):
    """Search a training stage's settings on dev with Ray Tune (ASHA early stopping); writes the best as a preset."""

    stage: str = option("align", "the stage to tune: align (vsa train-align) or mrnn (vsa train-mrnn)",
                        choices=("align", "mrnn"))
    features: str = option("", "feature folder (vsa features --out)")
    base: str = option("", "the stage's preset (a name in vsa_dist/presets/ or a YAML file) every trial starts from; "
                           "empty: the one the stage itself starts from (train_align, train_mrnn: the paper's "
                           "settings)")
    set: list[str] = option([], "the stage's config keys held fixed over the base, KEY=VALUE, comma-separated "
                                "(e.g. batch_size=20,dropout=0.2)")
    space: str = option("", "YAML file: config key → {loguniform|uniform|randint: [low, high]} or {choice: [...]}; "
                            "empty: lr and weight_decay, log-uniform")
    trials: int = option(8, "trials (settings sampled from the space)", range="[1, inf)")
    epochs: int = option(4, "most epochs a trial runs (also its learning-rate schedule's length)", range="[1, inf)")
    grace_epochs: int = option(1, "ASHA: epochs every trial runs before it may be stopped", range="[1, inf)")
    reduction_factor: int = option(2, "ASHA: at each rung the best 1/this of the trials go on", range="[2, inf)")
    workers: int = option(0, "Ray Train workers per trial; 0: each trial trains alone in its Ray Tune process",
                          range="[0, inf)")
    threads: int = option(1, "torch threads per trial process (per worker with --workers)", range="[1, inf)")
    concurrent: int = option(0, "trials at once; 0: as many as the cluster's CPUs hold", range="[0, inf)")
    seed: int = option(0, "seed of the search (the sampled settings) and of every trial")
    out: str = option("", "tune folder: Ray Tune's state, trials.json, best.yaml; default beside FEATURES: tune-STAGE")
    experiment: str = option("vsa-tune", "MLflow experiment (the search's run, each trial a child run)")
    resume: bool = option(False, "finish the search recorded in OUT/tune.json (finished trials are kept)")
    progress: bool = option(True, "Ray Tune's status table")

    def validate(self) -> None:
        if self.grace_epochs > self.epochs:
            raise cfglib.ConfigError(f"grace_epochs {self.grace_epochs} is more than epochs {self.epochs}")
        self.features = storage.absolute(self.features)
        if not self.out and self.features:
            self.out = str(Path(self.features).parent / f"tune-{self.stage}")
        if storage.is_remote(self.out):
            raise cfglib.ConfigError("out: a local folder (Ray Tune keeps its state there); features may be a URI")
