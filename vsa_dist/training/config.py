"""What every training stage's config has, and the checks they share; a stage's own dataclass adds its model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.config import option
from vsa_dist.data.manifests import FeatureSettingsMismatch, check_same_settings, load_features_manifest

OPTIMIZERS = ("sgd", "adam", "rmsprop")
LR_SCHEDULES = ("constant", "cosine")


@dataclass
class TrainConfig(cfglib.Config):
    """What every Ray Train stage's config has; a stage's own dataclass adds its model and may change defaults."""

    features: str = option("", "feature folder (vsa features --out)")
    out: str = option("", "run folder: checkpoints, run.json, best.pt; default beside FEATURES")
    epochs: int = option(20, "passes over the train images", range="[1, inf)")
    batch_size: int = option(100, "image-sentence pairs per step, over all workers (paper: 100)", range="[1, inf)")
    optimizer: str = option("sgd", "sgd (with momentum), adam or rmsprop", choices=OPTIMIZERS)
    lr: float = option(1e-4, "learning rate (chosen on dev)", range="(0, inf)")
    lr_schedule: str = option("constant", "constant, or cosine: decay to 0 over the planned epochs",
                              choices=LR_SCHEDULES)
    momentum: float = option(0.9, "SGD momentum", range="[0, 1)")
    weight_decay: float = option(0.0, "L2 weight decay (chosen on dev)", range="[0, inf)")
    clip: float = option(5.0, "element-wise gradient clipping (paper: 5)", range="(0, inf)")
    clip_norm: float = option(0.0, "clip the gradients' global norm at this instead of each element at `clip` (0: "
                                   "element-wise; VSE++: 2). With Adam, element-wise clipping of a large summed loss "
                                   "leaves second moments that stall a later, smaller one (docs/alignment.md)",
                              range="[0, inf)")
    ema: float = option(0.0, "score, keep and ship an exponential moving average of the weights, updated after every "
                             "step with this decay (0: the weights as trained; 0.998 averages about the last 500 "
                             "steps)", range="[0, 1)")
    max_words: int = option(32, "longer sentences are cut", range="[1, inf)")
    augment: list[str] = option([], "more feature folders of the same train images made another way (vsa features "
                                    "--flip: mirrored): each one's train split joins every epoch, so an epoch sees "
                                    "each train image once per folder (beyond the paper)")
    workers: int = option(2, "Ray Train workers (DDP)", range="[1, inf)")
    use_gpu: bool = option(False, "one GPU per worker")
    threads: int = option(1, "torch threads per CPU worker", range="[1, inf)")
    shuffle_buffer: int = option(1000, "images in each worker's local shuffle buffer", range="[0, inf)")
    prefetch_batches: int = option(4, "batches each worker prepares ahead (hides data wait)", range="[1, inf)")
    read_ahead: str = option("true", "start each epoch's stream while rank 0 scores dev: true, false, or auto (with "
                                     "GPUs only); docs/alignment.md measures it", choices=("true", "false", "auto"))
    seed: int = option(0, "random seed")
    resume: bool = option(False, "continue the run recorded in OUT/run.json from its last checkpoint")
    max_failures: int = option(2, "worker-group restarts from the last checkpoint after a failure", range="[0, 100]")
    experiment: str = option("", "MLflow experiment")
    register_as: str = option("", "registered model name; empty: do not register")
    test: bool = option(True, "evaluate the best-on-dev model on test once at the end")
    progress: bool = option(True, "progress output")

    def validate_training(self, default_out: str, min_batch: int, paths: tuple[str, ...] = ()) -> None:
        """The shared value checks (no I/O); ``out`` defaults beside the features, and local input paths (the
        features and the fields named in ``paths``) are made absolute: the workers of a cluster do not share the
        driver's working folder, and Ray Train's workers on this machine run in a folder of their own."""
        for name in ("features", "augment", *paths):
            value = getattr(self, name)  # one path, or a list of them
            setattr(self, name, [storage.absolute(v) for v in value] if isinstance(value, list)
                    else storage.absolute(value))
        if not self.out:
            self.out = str(Path(self.features).parent / default_out) if self.features else ""
        if self.batch_size < min_batch * self.workers:
            raise cfglib.ConfigError(f"need at least {min_batch} pairs per worker in a batch")

    def check_inputs(self) -> None:
        check_features(self.features, need_test=self.test)
        for folder in self.augment:
            check_augment_folder(self.features, folder)


def check_features(features: str, need_test: bool) -> None:
    """Config validation shared by the training stages: a feature folder with train, dev (and test) images."""
    if not features or not storage.exists(storage.join(features, "manifest.json")):
        raise cfglib.ConfigError(f"features {features!r}: no manifest.json there (run vsa features first)")
    splits = load_features_manifest(features)["splits"]
    for split in ("train", "dev") + (("test",) if need_test else ()):
        if not splits.get(split, {}).get("images"):
            raise cfglib.ConfigError(f"features {features}: no {split!r} images")


def check_augment_folder(features: str, folder: str) -> None:
    """An --augment folder must hold the train split of the same images, over the same vocabulary, with features
    made by the same CNN and regions (only how the images were shown may differ)."""
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
