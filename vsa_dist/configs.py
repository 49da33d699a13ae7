"""Every command's typed config but the training stages' (``recipes/config.py``): defaults, help, ranges and value
checks in one place. Nothing here imports torch, Ray or MLflow, so that ``vsa COMMAND --help`` is built from these
alone; the stages (``vsa_dist/stages/``) run them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vsa_dist import config as cfglib
from vsa_dist import storage
from vsa_dist.config import option
from vsa_dist.data.images import DEFAULT_MAX_PIXELS
from vsa_dist.data.manifests import MANIFEST, load_features_manifest, load_manifest
from vsa_dist.data.text import VOCAB_MIN_COUNT
from vsa_dist.features import PROPOSAL_METHODS
from vsa_dist.models import REGION_MODES
from vsa_dist.paths import data_root, runs_root

FORMATS = ("flickr8k", "flickr30k", "karpathy", "coco")


def check_splits(splits: list[str], folder: str, manifest: dict) -> None:
    """The splits a command is asked for are all in the folder it reads."""
    known = set(manifest["splits"])
    if unknown := sorted(set(splits) - known):
        raise cfglib.ConfigError(f"splits {unknown} are not in {folder} (it has {sorted(known)})")


@dataclass
class ShardsConfig(cfglib.Config):
    """Build WebDataset shards from a caption dataset."""

    format: str = option("flickr8k", "input format", choices=FORMATS)
    root: str = option("", "dataset folder (captions, split lists, images/)")
    out: str = option("", "output folder for shards, manifest.json, rejects.jsonl")
    captions: str = option("", "caption file(s), comma-separated; default: the format's usual name in ROOT")
    images_dir: str = option("", "image folder; default ROOT/images if it exists, else ROOT")
    split_files: str = option("", "split lists as a pattern with {split}, e.g. 'Flickr_8k.{split}Images.txt'")
    split_from: str = option("", "coco: take train/val/test from this Karpathy-split JSON")
    samples_per_shard: int = option(500, "images per tar shard", range="[1, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "reject images above this many pixels (decompression bombs)",
                                                 range="[1, inf)")
    vocab_min_count: int = option(VOCAB_MIN_COUNT, "vocabulary keeps words seen this often in train", range="[1, inf)")
    vocab_splits: list[str] = option(["train"], "splits the vocabulary is counted on")
    progress: bool = option(True, "show a progress bar")

    def validate(self) -> None:
        if not self.out:
            raise cfglib.ConfigError("out: an output folder is required")

    def check_inputs(self) -> None:
        if not self.root or not storage.exists(self.root):
            raise cfglib.ConfigError(f"root {self.root!r}: no such dataset folder")


@dataclass
class FeaturesConfig(cfglib.Config):
    """Extract whole-image + region CNN features from image shards."""

    shards: str = option("", "image-shard folder (vsa shards build --out)")
    out: str = option("", "output folder for feature shards + manifest.json")
    regions: str = option("roi", "region features", choices=REGION_MODES)
    proposals: str = option("grid", "candidate boxes", choices=PROPOSAL_METHODS)
    num_regions: int = option(19, "regions per image besides the whole image (paper: 19)", range="[1, inf)")
    backbone: str = option("efficientnet-lite0", "efficientnet-lite0 (default), -lite1 or -lite2 (the backbones "
                                                 "extra), torchvision:NAME or timm:NAME")
    weights: str = option("", "local weight file (needed for torchvision:/timm: backbones)")
    splits: list[str] = option([], "splits to extract; empty = all in the manifest")
    device: str = option("auto", "auto (GPU when the cluster has one), cpu or cuda", choices=("auto", "cpu", "cuda"))
    precision: str = option("auto", "auto (bf16 where the hardware runs it natively: GPU, or CPU with "
                                    "AMX/AVX512-BF16), fp32 or bf16", choices=("auto", "fp32", "bf16"))
    actors: int = option(0, "CNN actors; 0 = one per GPU, or one per `threads` CPUs", range="[0, inf)")
    threads: int = option(1, "torch threads per actor; on a CPU, one actor per this many CPUs (1 was fastest on 2 "
                             "cores: benchmarks/extract.py)", range="[1, inf)")
    batch_size: int = option(32, "images per Ray Data batch handed to an actor", range="[1, inf)")
    cnn_batch: int = option(0, "images per CNN call; 0 = 4 on CPU, 64 on GPU", range="[0, inf)")
    nms_iou: float = option(0.5, "IoU above which a lower-scored candidate is suppressed", range="(0, 1]")
    roi_size: int = option(2, "RoIAlign output grid (averaged) in roi mode", range="[1, inf)")
    max_proposals: int = option(200, "selective-search candidates kept per image", range="[1, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images above this many pixels, from their header "
                                                 "(decompression bombs)", range="[1, inf)")
    flip: bool = option(False, "mirror every image left to right before proposing regions and running the CNN: a "
                               "second feature folder of the same images, for training on both (train-mrnn --augment)")
    trunk_block: int = option(0, "N > 0: store each image's activation entering CNN block N instead of its vectors "
                                 "(an EfficientNet-lite; lite0 has blocks 0-15): the input of vsa train-align "
                                 "--encoder cached, which trains the blocks from N on", range="[0, inf)")
    cnn_from: str = option("", "an alignment checkpoint (best.pt) that trained its CNN (train-align --encoder cached "
                               "or full): extract with that CNN instead of the pretrained one, for a generator on "
                               "the trained encoder's features")
    progress: bool = option(True, "Ray Data progress bars")

    def validate(self) -> None:
        if not self.out:
            raise cfglib.ConfigError("out: an output folder is required")
        self.cnn_from = storage.absolute(self.cnn_from)  # the CNN actors do not run in this folder
        if self.cnn_from and (self.trunk_block or not self.backbone.startswith("efficientnet-lite")):
            raise cfglib.ConfigError("cnn_from: vectors of an EfficientNet-lite backbone only (no --trunk-block)")
        if self.trunk_block and (self.proposals != "grid" or self.regions != "roi"
                                 or not self.backbone.startswith("efficientnet-lite")):
            raise cfglib.ConfigError("trunk_block: whole images of an EfficientNet-lite backbone only (no regions: "
                                     "leave proposals grid and regions roi)")
        if storage.same_place(self.out, self.shards):
            raise cfglib.ConfigError("out must differ from shards: both folders hold a manifest.json")
        # recorded in the manifest: a model that trains its whole CNN reads the images from there, from any folder
        self.shards = storage.absolute(self.shards)

    def check_inputs(self) -> None:
        if self.cnn_from and not storage.exists(self.cnn_from):
            raise cfglib.ConfigError(f"cnn_from {self.cnn_from}: no such checkpoint")
        if not self.shards or not storage.exists(storage.join(self.shards, MANIFEST)):
            raise cfglib.ConfigError(f"shards {self.shards!r}: no {MANIFEST} there (build it with vsa shards build)")
        check_splits(self.splits, self.shards, load_manifest(self.shards))


@dataclass
class SnippetsConfig(cfglib.Config):
    """Align sentence snippets to image regions with a trained alignment model."""

    checkpoint: str = option("", "alignment model (vsa train-align: OUT/best.pt)")
    features: str = option("", "feature folder the model was trained on")
    out: str = option("", "output folder: snippet shards + manifest.json")
    beta: float = option(0.1, "cost of a region change between neighbouring words: 0 = each word its own best region; "
                              "larger = longer snippets", range="[0, inf)")
    splits: list[str] = option(["train"], "splits to align")
    actors: int = option(0, "aligner actors; 0 = one per CPU of the cluster", range="[0, inf)")
    batch_size: int = option(32, "images per actor call", range="[1, inf)")
    progress: bool = option(True, "Ray Data progress bars")

    def validate(self) -> None:
        if not self.out:
            raise cfglib.ConfigError("out: an output folder is required")

    def check_inputs(self) -> None:
        if not self.checkpoint or not storage.exists(self.checkpoint):
            raise cfglib.ConfigError(
                f"checkpoint {self.checkpoint!r}: no such file (vsa train-align writes OUT/best.pt)"
            )
        if not self.features or not storage.exists(storage.join(self.features, MANIFEST)):
            raise cfglib.ConfigError(f"features {self.features!r}: no manifest.json there")
        check_splits(self.splits, self.features, load_features_manifest(self.features))


def require_checkpoint(path: str) -> None:
    if not path or not storage.exists(path):
        raise cfglib.ConfigError(f"checkpoint {path!r}: no such file")


@dataclass
class EvalConfig(cfglib.Config):
    """Evaluate a checkpoint (best.pt of a training run) on a split of a feature folder."""

    checkpoint: str = option("", "best.pt (or an epoch checkpoint) of a training run")
    features: str = option("", "feature folder made with the settings the model was trained on")
    split: str = option("test", "split to score (model selection happens on dev, never test)")
    beam: int = option(0, "captions: beam size; 0: the size chosen on dev in training (or 1)", range="[0, inf)")
    length_penalty: float | None = option(None, "captions: beam ranking by log P / length**this; unset: the model's "
                                                "training setting (choose on dev, never on test)", range="[0, inf)")
    beta: float = option(0.1, "snippets: the MRF's beta (vsa align-snippets)", range="[0, inf)")
    ensemble: list[str] = option([], "captions, retrieval: more checkpoints of the same kind (same "
                                               "vocabulary, same feature settings) scored together with --checkpoint "
                                               "as one model")
    images: int = option(0, "captions: score the split's first N images only (0: all; a quick look at train)",
                         range="[0, inf)")
    out: str = option("", "also write the metrics to this JSON file")

    def check_inputs(self) -> None:
        require_checkpoint(self.checkpoint)
        for path in self.ensemble:
            if not storage.exists(path):
                raise cfglib.ConfigError(f"ensemble checkpoint {path!r}: no such file")
        if not self.features or not storage.exists(storage.join(self.features, "manifest.json")):
            raise cfglib.ConfigError(f"features {self.features!r}: no manifest.json there")


@dataclass
class RegionEvalConfig(cfglib.Config):
    """Caption the regions of a snippet folder's split with a generator and score the captions against the
    snippets aligned to each region."""

    checkpoint: str = option("", "generator: best.pt of vsa train-mrnn (a whole-image or a region model)")
    snippets: str = option("", "snippet folder with the split (vsa align-snippets --splits test): the fixed test set")
    split: str = option("test", "split to score (model selection happens on dev, never test)")
    beam: int = option(0, "beam size; 0: the size chosen on dev in training (or 1)", range="[0, inf)")
    length_penalty: float | None = option(None, "beam ranking by log P / length**this; unset: the model's training "
                                                "setting (choose on dev region captions, never on test)",
                                          range="[0, inf)")
    min_words: int = option(2, "snippets shorter than this are no reference (a lone 'dog' or 'the')", range="[1, inf)")
    out: str = option("", "also write the metrics and every region's box, caption and references to this JSON file")

    def check_inputs(self) -> None:
        require_checkpoint(self.checkpoint)
        if not self.snippets or not storage.exists(storage.join(self.snippets, MANIFEST)):
            raise cfglib.ConfigError(f"snippets {self.snippets!r}: no {MANIFEST} there (make the folder with vsa "
                                     f"align-snippets --splits {self.split})")
        manifest = load_manifest(self.snippets)
        if manifest.get("kind") != "snippets" or self.split not in manifest["splits"]:
            raise cfglib.ConfigError(f"snippets {self.snippets}: not a snippet folder with a {self.split} split "
                                     f"(vsa align-snippets --splits {self.split})")


@dataclass
class CaptionConfig(cfglib.Config):
    """Caption images (files or folders) with a model from the MLflow registry."""

    images: list[str] = option([], "image files or folders", positional=True)
    model: str = option("models:/vsa-captioner@champion", "MLflow model URI or model folder")
    beam: int = option(0, "beam size; 0: the one chosen on dev when the model was trained", range="[0, inf)")
    batch_size: int = option(32, "images per feature/caption batch", range="[1, inf)")
    regions: int = option(0, "also describe this many top regions of each image, with their boxes (a model trained "
                             "with --snippets)", range="[0, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images above this many pixels, from their header "
                                                 "(decompression bombs); may be raised", range="[1, inf)")
    format: str = option("tsv", "output lines: tsv (path, caption; a line per region) or jsonl (an object per image)",
                         choices=("tsv", "jsonl"))
    html: str = option("", "also write the images, their captions and their regions' boxes to this HTML page")

    def validate(self) -> None:
        if not self.images:
            raise cfglib.ConfigError("name at least one image file or folder")

    def check_inputs(self) -> None:
        for item in self.images:
            if not Path(item).exists():
                raise cfglib.ConfigError(f"{item}: no such file or folder")


def is_shards(folder: Path) -> bool:
    return (folder / MANIFEST).is_file() and any(folder.glob("*.tar"))


@dataclass
class SearchConfig(cfglib.Config):
    """Search images for a sentence, or sentences for an image, with a registered alignment model."""

    inputs: list[str] = option([], "the sentence, then the image folders or shard folders to search (with --image: "
                                   "only the folders)", positional=True)
    image: str = option("", "search sentences for this image instead (the sentences of shard folders)")
    model: str = option("models:/vsa-align@champion", "MLflow model URI, model folder or best.pt checkpoint")
    top: int = option(10, "hits to show", range="[1, inf)")
    format: str = option("tsv", "output lines: tsv (rank, score, image or sentence) or jsonl", choices=("tsv", "jsonl"))
    html: str = option("", "also write the hits to this HTML page (thumbnails and scores)")
    splits: list[str] = option([], "shard folders: only these splits (default all)")
    weights: str = option("", "the backbone's local weight file (torchvision:/timm: backbones; the packaged "
                              "EfficientNet-Lite weights need none)")
    batch_size: int = option(32, "images per embedding batch", range="[1, inf)")
    max_pixels: int = option(DEFAULT_MAX_PIXELS, "refuse images above this many pixels, from their header "
                                                 "(decompression bombs); may be raised", range="[1, inf)")
    index_dir: str = option("", "keep the image indexes under this folder (a folder per corpus); default the runs "
                                "folder's search-index/")

    def validate(self) -> None:
        needed = 1 if self.image else 2
        if len(self.inputs) < needed:
            raise cfglib.ConfigError("name the sentence and at least one folder to search" if not self.image
                                     else "name at least one shard folder whose sentences to search")
        if not self.image and not self.inputs[0].strip():
            raise cfglib.ConfigError("the sentence is empty: there is nothing to rank the images by")

    @property
    def query(self) -> str:
        return "" if self.image else self.inputs[0]

    @property
    def corpora(self) -> list[str]:
        return self.inputs if self.image else self.inputs[1:]

    def check_inputs(self) -> None:
        for corpus in self.corpora:
            if not Path(corpus).is_dir():
                raise cfglib.ConfigError(f"{corpus}: not a folder (an image folder or a shard folder)")
        if self.image and not Path(self.image).is_file():
            raise cfglib.ConfigError(f"{self.image}: no such image file")
        if self.image and not any(is_shards(Path(c)) for c in self.corpora):
            raise cfglib.ConfigError("--image searches sentences: name a shard folder (vsa shards build --out); "
                                     "image folders hold no sentences")


@dataclass
class ReportConfig(cfglib.Config):
    """Render a run's alignments, snippets, captions, retrieval examples and curves as one HTML page."""

    run: list[str] = option([], "run folder (vsa pipeline --run-dir)", positional=True)
    features: str = option("", "feature folder; default RUN/features")
    align: str = option("", "alignment checkpoint; default RUN/align/best.pt")
    align_features: str = option("", "the alignment model's own feature folder when it reads another kind (a trunk "
                                     "folder: train-align --encoder cached); default FEATURES")
    captioner: str = option("", "generator checkpoint; default RUN/mrnn/best.pt")
    region_captioner: str = option("", "generator for region captions (trained with --snippets); default the captioner")
    split: str = option("test", "split the examples come from")
    images: int = option(8, "example images on the page", range="[1, inf)")
    beta: float = option(0.1, "snippet MRF beta (vsa align-snippets)", range="[0, inf)")
    regions: int = option(3, "region captions per image", range="[0, inf)")
    beam: int = option(0, "beam for the captions; 0: the captioner's own (chosen on dev in training; vsa eval captions "
                          "--split dev compares others)", range="[0, inf)")
    length_penalty: float | None = option(None, "captions: beam ranking by log P / length**this; unset: the "
                                                "captioner's training setting", range="[0, inf)")
    region_beam: int = option(0, "beam for the region captions; 0: the region captioner's own (chosen on whole-image "
                                 "dev; vsa eval regions --split dev chooses one on region captions)", range="[0, inf)")
    region_length_penalty: float | None = option(None, "region captions: as --length-penalty, for the region "
                                                       "captioner", range="[0, inf)")
    out: str = option("", "the HTML file; default RUN/report.html")
    figure: str = option("", "also draw the examples into one JPEG (each image with its region boxes, its caption and "
                             "region captions) and write them as JSON beside it (FIGURE with .json): for docs")
    log_to_mlflow: bool = option(True, "log the page to the generator's MLflow run")

    def validate(self) -> None:
        if len(self.run) != 1:
            raise cfglib.ConfigError("name one run folder")
        root = self.run[0]
        self.features = self.features or storage.join(root, "features")
        self.align = self.align or storage.join(root, "align", "best.pt")
        self.captioner = self.captioner or storage.join(root, "mrnn", "best.pt")
        self.region_captioner = self.region_captioner or self.captioner
        self.out = self.out or storage.join(root, "report.html")
        if self.figure and not self.figure.lower().endswith((".jpg", ".jpeg")):
            raise cfglib.ConfigError(f"figure {self.figure!r}: a JPEG file name (.jpg), its JSON goes beside it")

    def check_inputs(self) -> None:
        for key in ("align", "captioner", "region_captioner"):
            if not storage.exists(getattr(self, key)):
                raise cfglib.ConfigError(f"{key} {getattr(self, key)!r}: no such checkpoint")
        for key in ("features", "align_features"):
            if getattr(self, key) and not storage.exists(storage.join(getattr(self, key), "manifest.json")):
                raise cfglib.ConfigError(f"{key} {getattr(self, key)!r}: no manifest.json there")


# the smoke test's models' alias: never the one the commands' --model defaults name (@champion)
SMOKE_ALIAS = "smoke"


@dataclass
class PipelineConfig(cfglib.Config):
    """Run the whole pipeline locally on one machine."""

    data: str = option("flickr8k-mini", "dataset folder, or the name of one under $VSA_DATA_ROOT (default: "
                       "../shared/data beside the checkout)")
    format: str = option("flickr8k", "dataset format (see vsa shards build)", choices=FORMATS)
    regions: str = option("roi", "region features (see vsa features)", choices=REGION_MODES)
    name: str = option("", "the run's folder under the runs root ($VSA_RUNS_ROOT, default the checkout's runs/); "
                       "default: the data folder's name (mini for flickr8k-mini)")
    run_dir: str = option("", "where every stage writes, in place of the runs root's NAME folder")
    align_preset: str = option("train_align_modern", "alignment preset (train_align = the paper)")
    align_epochs: int = option(8, "alignment epochs", range="[1, inf)")
    align_batch_size: int = option(20, "alignment pairs per step (the mini set has 100 train images)", range="[1, inf)")
    trunk_block: int = option(12, "with an alignment preset that trains the CNN's upper blocks (encoder cached): the "
                                  "block whose input is cached, for every image and mirrored for the train images",
                              range="[1, inf)")
    mrnn_preset: str = option("train_mrnn_attention", "generator preset (train_mrnn = the paper; the default "
                                                      "attends over the regions: on the mini set its captions differ "
                                                      "from image to image, the plain LSTM's were one string)")
    mrnn_epochs: int = option(8, "generator epochs", range="[1, inf)")
    mrnn_batch_size: int = option(50, "generator pairs per step", range="[1, inf)")
    alias: str = option("", "the alias both registered models take when they beat its holder on dev; default: smoke "
                            "for the flickr8k-mini smoke test (its models must never become the ones every command "
                            "uses by default, @champion), champion otherwise")
    progress: bool = option(True, "progress bars")

    def validate(self) -> None:
        if not self.data:
            raise cfglib.ConfigError("data: empty (a dataset folder, or a name under $VSA_DATA_ROOT)")
        if "/" not in self.data and not storage.exists(self.data):  # a bare name: one of the shared data sets
            self.data = str(data_root() / self.data)
        if not self.run_dir:
            data_name = self.data.rstrip("/").rsplit("/", 1)[-1]  # a path or a URI (s3://bucket/flickr8k)
            name = self.name or {"flickr8k-mini": "mini"}.get(data_name, data_name)
            self.run_dir = str(runs_root() / name)
        self.alias = self.alias or (SMOKE_ALIAS if self.smoke_test else "champion")
        for key, preset in (("align_preset", self.align_preset), ("mrnn_preset", self.mrnn_preset)):
            if not cfglib.preset_exists(preset):
                raise cfglib.ConfigError(f"{key} {preset!r}: no such preset in vsa_dist/presets/")

    @property
    def smoke_test(self) -> bool:
        """The run on flickr8k-mini: a check that every stage works, not a model."""
        return self.data.rstrip("/").endswith("flickr8k-mini")

    def check_inputs(self) -> None:
        if not storage.exists(self.data):
            raise cfglib.ConfigError(f"data {self.data!r}: no such dataset folder (set --data or VSA_DATA_ROOT)")


@dataclass
class ModelsConfig(cfglib.Config):
    """List the registered models: versions, aliases, data set, dev and test scores, training minutes."""

    names: list[str] = option([], "only these registered models (default all)", positional=True)
    format: str = option("table", "output: table (for people) or jsonl (an object per version)",
                         choices=("table", "jsonl"))


@dataclass
class PromoteConfig(cfglib.Config):
    """Point an alias (default @champion, the one every command uses) at a registered model's version."""

    target: list[str] = option([], "NAME VERSION, e.g. vsa-captioner 2", positional=True)
    alias: str = option("champion", "the alias to move")

    def validate(self) -> None:
        if len(self.target) != 2 or not self.target[1].isdigit():
            raise cfglib.ConfigError("name the model and its version: vsa models promote NAME VERSION (vsa models "
                                     "lists them)")
        if not self.alias or not self.alias.replace("-", "_").isidentifier():
            raise cfglib.ConfigError(f"alias {self.alias!r}: letters, digits, '_' and '-' only")
