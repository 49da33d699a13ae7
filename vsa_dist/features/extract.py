"""Per-batch work of feature extraction, free of Ray: the stage runner maps these over a Ray Data
stream, the benchmark's naive baseline and the tests call them directly.

A batch is a dict of numpy arrays as ``ray.data.read_webdataset(decoder=None)`` yields it
(``__key__``, ``__url__``, ``jpg`` bytes, ``json`` bytes); the output batch has one row per input row,
either a finished feature record or an ``error`` saying why that image has none.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from vsa_dist.checkpoints import trained_cnn
from vsa_dist.data.images import DEFAULT_MAX_PIXELS, ImageRejected, check_image, model_input
from vsa_dist.features.format import FEATURES_FORMAT_VERSION, npy_bytes, npy_load
from vsa_dist.features.proposals import grid_boxes, propose
from vsa_dist.io import sha256_file
from vsa_dist.models.backbone import load_backbone
from vsa_dist.models.regions import RegionFeatureExtractor, TrunkFeatureExtractor

OUTPUT_COLUMNS = ("__key__", "__url__", "json", "feat.npy", "boxes.npy", "proposals.npy", "error")


@dataclass(frozen=True)
class ExtractorSettings:
    backbone: str = "efficientnet-lite0"
    weights: str = ""
    region_mode: str = "roi"
    proposals: str = "grid"
    num_regions: int = 19
    nms_iou: float = 0.5
    roi_size: int = 2
    max_proposals: int = 200
    cnn_batch: int = 4          # images per CNN call: small batches win on a CPU (benchmarks/extract.py)
    threads: int = 0            # torch threads per actor; 0 = torch's default
    device: str = "cpu"
    channels_last: bool = True
    precision: str = "fp32"     # or bf16: autocast, where the hardware runs it natively
    max_pixels: int = DEFAULT_MAX_PIXELS  # images above this are refused from their header, before decoding
    flip: bool = False          # mirror every image left to right first (a training augmentation's second folder)
    trunk_block: int = 0        # N > 0: each image's activation entering block N instead of vectors (models/encoder.py)
    cnn_from: str = ""          # an alignment checkpoint whose trained CNN extracts, not the pretrained one


def describe(settings: ExtractorSettings, spec: dict[str, Any]) -> dict[str, Any]:
    """The manifest's ``settings``: everything that decides what the features mean."""
    weights = spec["weights"]  # the resolved file, also for the packaged default
    digest = sha256_file(Path(weights))
    return {
        "format_version": FEATURES_FORMAT_VERSION, "backbone": spec["name"], "weights": Path(weights).name,
        "weights_sha256": digest, "input_size": spec["input_size"], "mean": list(spec["mean"]),
        "std": list(spec["std"]), "feature_dim": spec["feature_dim"], "region_mode": settings.region_mode,
        "proposals": settings.proposals, "num_regions": settings.num_regions, "roi_size": settings.roi_size,
        "nms_iou": settings.nms_iou, "max_proposals": settings.max_proposals, "precision": settings.precision,
        "dtype": "float16", "flip": settings.flip,
        # a trunk folder never meets a vector folder: the key exists only where it is set (older folders lack it)
        **({"trunk_block": settings.trunk_block} if settings.trunk_block else {}),
        # features of a trained CNN are another encoder's: a model trained on them never meets the pretrained one's
        **({"cnn_sha256": sha256_file(Path(settings.cnn_from))} if settings.cnn_from else {}),
    }


def decode_rgb(jpeg: bytes | None, max_pixels: int = DEFAULT_MAX_PIXELS, flip: bool = False) -> np.ndarray:
    """Image bytes → uint8 [H, W, 3] RGB as shown (OpenCV applies the EXIF orientation, as ``check_jpeg`` does for
    the shard's width and height), mirrored left to right with ``flip``. ValueError saying why not: no bytes, too
    many pixels, does not decode."""
    if not isinstance(jpeg, bytes):  # a sample without its image member (or a link in the tar, which has no bytes)
        raise ValueError("the sample has no image bytes")
    try:
        check_image(jpeg, max_pixels)
    except ImageRejected as err:
        raise ValueError(str(err)) from err
    array = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if array is None:
        raise ValueError("image does not decode")
    rgb = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(rgb[:, ::-1]) if flip else rgb


def add_proposals(batch: dict[str, np.ndarray], method: str = "selective-search", max_proposals: int = 200,
                  min_proposals: int = 19, flip: bool = False) -> dict[str, np.ndarray]:
    """Candidate boxes per image (``proposals`` column, npy bytes; empty bytes where the image fails).

    Runs as its own stage (plain Ray tasks) ahead of the CNN actors: selective search is CPU work that
    scales with cores, not with the model.
    """
    out = []
    for jpeg in batch.get("jpg", [None] * len(batch["__key__"])):
        try:
            image = decode_rgb(jpeg, flip=flip)  # the boxes of the image the CNN will see
        except ValueError:
            out.append(b"")  # the CNN stage decodes again and records the reason
            continue
        boxes = propose(image, method, max_proposals)
        if len(boxes) < min_proposals:
            boxes = np.concatenate([boxes, grid_boxes(image.shape[1], image.shape[0])])
        out.append(npy_bytes(boxes.astype(np.float32)))
    batch["proposals"] = np.array(out, dtype=object)
    return batch


def jpeg_batch(jpegs: list[bytes], names: list[str]) -> dict[str, np.ndarray]:
    """JPEG bytes as ``RegionExtractor`` receives them from ``read_webdataset``: a batch of columns, no metadata
    (for callers outside the pipeline: captioning new images, benchmarks)."""
    # keys by position: a file name is not a sample key (a path has slashes); __url__ keeps the name
    return {"__key__": np.array([f"image-{i}" for i in range(len(names))], dtype=object),
            "__url__": np.array(names, dtype=object),
            "jpg": np.array(jpegs, dtype=object), "json": np.array([b"{}"] * len(jpegs), dtype=object)}


class RegionExtractor:
    """Callable class for ``map_batches``: the backbone is loaded once per actor (or per process)."""

    def __init__(self, settings: ExtractorSettings):
        self.settings = settings
        backbone = load_backbone(settings.backbone, settings.weights)
        if settings.cnn_from:  # before the extractor folds BatchNorm into the convolutions
            name, weights = trained_cnn(settings.cnn_from)
            if name != backbone.spec.name:
                raise ValueError(f"cnn_from {settings.cnn_from}: it trained {name}, not {backbone.spec.name}")
            backbone.trunk.net.load_state_dict(weights)
        backbone = backbone.to(settings.device)
        if settings.trunk_block:
            self.model = TrunkFeatureExtractor(backbone, settings.trunk_block, settings.channels_last,
                                               settings.precision)
        else:
            self.model = RegionFeatureExtractor(backbone, settings.region_mode, settings.num_regions, settings.nms_iou,
                                                settings.roi_size, channels_last=settings.channels_last,
                                                precision=settings.precision)
        self.model_name = backbone.spec.name

    def _decode(self, jpeg: bytes | None) -> torch.Tensor:
        return torch.from_numpy(decode_rgb(jpeg, self.settings.max_pixels, self.settings.flip)).permute(2, 0, 1)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        # Per call, not in __init__: OpenMP's thread count is per calling thread, and a Ray actor may run
        # its constructor and its calls on different threads (set in __init__, calls ran on one core).
        if self.settings.threads > 0 and torch.get_num_threads() != self.settings.threads:
            torch.set_num_threads(self.settings.threads)
        rows = len(batch["__key__"])
        out: dict[str, list] = {name: [b""] * rows for name in OUTPUT_COLUMNS}
        out["__key__"], out["__url__"], out["error"] = list(batch["__key__"]), list(batch["__url__"]), [""] * rows
        # A column that no sample of the batch has is absent, not a column of Nones.
        jpegs, metas = batch.get("jpg", [None] * rows), batch.get("json", [None] * rows)
        good, images, candidates, parsed = [], [], [], {}
        for i in range(rows):
            key = str(batch["__key__"][i])
            try:
                if key.startswith("/") or ".." in key.split("/"):
                    raise ValueError(f"sample key {key!r} would leave the output folder")
                if not isinstance(metas[i], bytes):
                    raise ValueError("the sample has no JSON member")
                parsed[i] = json.loads(metas[i])  # ValueError when it is not JSON
                if not isinstance(parsed[i], dict):
                    raise ValueError("the sample's JSON is not an object")
                image = self._decode(jpegs[i])
            except (RuntimeError, ValueError, cv2.error) as err:
                out["error"][i] = f"image rejected: {err}"
                out["json"][i] = metas[i] if isinstance(metas[i], bytes) else b""  # the reject names the file
                continue
            if "proposals" in batch and len(batch["proposals"][i]):
                boxes = npy_load(batch["proposals"][i])
            else:
                boxes = grid_boxes(image.shape[2], image.shape[1])
            good.append(i)
            images.append(image)
            candidates.append(torch.from_numpy(boxes))
        step = self.settings.cnn_batch
        with self.model.precision_context(self.settings.device):
            results = [self.model(images[start:start + step], candidates[start:start + step])
                       for start in range(0, len(good), step)]
        for start, (boxes, scores, feats) in zip(range(0, len(good), step), results):
            idx = good[start:start + step]
            for j, i in enumerate(idx):
                meta = parsed[i]
                meta.update(model=self.model_name, region_mode=self.settings.region_mode,
                            proposals=self.settings.proposals, num_proposals=len(candidates[start + j]),
                            box_scores=[round(float(s), 5) for s in scores[j]])
                out["json"][i] = json.dumps(meta, ensure_ascii=False).encode("utf-8")
                out["feat.npy"][i] = npy_bytes(feats[j].numpy())
                out["boxes.npy"][i] = npy_bytes(boxes[j].numpy())
                out["proposals.npy"][i] = npy_bytes(candidates[start + j].numpy())
        return {name: np.array(values, dtype=object) for name, values in out.items()}


class PixelExtractor:
    """``RegionExtractor``'s call for a model that runs its whole CNN (``encoder=full``): each image as that model
    takes it, uint8 pixels [3, S, S] (``data.images.model_input``, as its training and evaluation decode them) in the
    ``feat.npy`` column, no regions."""

    def __init__(self, input_size: int, max_pixels: int = DEFAULT_MAX_PIXELS):
        self.input_size, self.max_pixels = input_size, max_pixels
        self.settings = ExtractorSettings(num_regions=0, max_pixels=max_pixels)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["__key__"])
        out: dict[str, list] = {name: [b""] * rows for name in OUTPUT_COLUMNS}
        out["__key__"], out["__url__"], out["error"] = list(batch["__key__"]), list(batch["__url__"]), [""] * rows
        for i, jpeg in enumerate(batch["jpg"]):
            try:
                pixels = model_input(jpeg, self.input_size, self.max_pixels)
            except ImageRejected as err:
                out["error"][i] = f"image rejected: {err}"
                continue
            out["feat.npy"][i] = npy_bytes(pixels)
            out["boxes.npy"][i] = npy_bytes(np.zeros((0, 4), np.float32))
        return {name: np.array(values, dtype=object) for name, values in out.items()}


def checked_extractor(feature_settings: dict[str, Any], weights: str = "", max_pixels: int = DEFAULT_MAX_PIXELS,
                      trained_cnn_file: str = "") -> RegionExtractor | PixelExtractor:
    """A one-process extractor that makes a new image's features the way a model's training features were made
    (``feature_settings``: the feature manifest's, as the model keeps them), its backbone's weights checked against
    the ones the model was trained on (ValueError if they differ). Features of a trained CNN (``vsa features
    --cnn-from``) need that CNN's checkpoint, ``trained_cnn_file``, the very file they were made with.

    The whole-image row is the feature map's global average in every region mode, so new images get ``roi`` features
    of grid boxes: one CNN pass, never selective search. A model that runs its whole CNN gets the images themselves.
    """
    if feature_settings.get("input") == "pixels":  # its own CNN does all the work: no pretrained weights to check
        return PixelExtractor(feature_settings["input_size"], max_pixels)
    if wanted := feature_settings.get("cnn_sha256"):
        if not trained_cnn_file:
            raise ValueError(f"the model was trained on the features of a trained CNN (an alignment checkpoint, sha256 "
                             f"{wanted[:12]}) and does not carry it (no trained_cnn file): new images cannot be "
                             "embedded as its features were; caption and score feature folders made with vsa features "
                             "--cnn-from")
        if (found := sha256_file(Path(trained_cnn_file))) != wanted:
            raise ValueError(f"{trained_cnn_file}: not the CNN the model's features were made with (sha256 "
                             f"{found[:12]} vs {wanted[:12]})")
    settings = ExtractorSettings(backbone=feature_settings["backbone"], weights=weights, region_mode="roi",
                                 proposals="grid", num_regions=feature_settings["num_regions"],
                                 roi_size=feature_settings["roi_size"], precision=feature_settings["precision"],
                                 threads=0, max_pixels=max_pixels, trunk_block=feature_settings.get("trunk_block") or 0,
                                 cnn_from=trained_cnn_file if wanted else "")
    extractor = RegionExtractor(settings)
    check_weights(extractor.model.backbone.spec.weights, feature_settings,
                  "the model was trained on", "give the model's weight file")
    return extractor


def check_weights(weights: str, feature_settings: dict[str, Any], made: str, remedy: str) -> None:
    """The backbone weight file ``weights`` is the one the features (``feature_settings``) were made with; ValueError
    saying whose weights they should be (``made``) and what to do (``remedy``) otherwise."""
    used = sha256_file(Path(weights))
    if used != feature_settings["weights_sha256"]:
        raise ValueError(f"backbone weights {weights} are not the ones {made} (sha256 {used[:12]} vs "
                         f"{feature_settings['weights_sha256'][:12]}); {remedy}")


def image_features(extractor: RegionExtractor, jpegs: list[bytes],
                   names: list[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """JPEG bytes → the [G, 1+R, D] float16 features ``vsa features`` would have stored for the G images that
    decode, their regions' [G, R, 4] boxes (best first), and per image of ``jpegs`` an error ('' where it decoded)."""
    out = extractor(jpeg_batch(jpegs, names))
    errors = [str(error) for error in out["error"]]
    good = [i for i, error in enumerate(errors) if not error]
    if not good:  # nothing decoded: empty arrays of the right rank
        regions = extractor.settings.num_regions
        return np.zeros((0, 1 + regions, 1), np.float16), np.zeros((0, regions, 4), np.float32), errors
    return (np.stack([npy_load(out["feat.npy"][i]) for i in good]),
            np.stack([npy_load(out["boxes.npy"][i]) for i in good]), errors)
