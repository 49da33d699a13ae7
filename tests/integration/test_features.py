"""Feature extraction on a real local Ray cluster: shapes, counts, manifest, correctness, resume, rejects."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from conftest import REPO
from torchvision.ops import roi_align

from vsa_dist.cli import main as vsa
from vsa_dist.data.shards import load_manifest, shard_paths
from vsa_dist.features.extract import decode_rgb
from vsa_dist.features.format import FeatureSettingsMismatch, check_same_settings, decode_sample, load_features_manifest
from vsa_dist.features.proposals import grid_boxes, selective_search
from vsa_dist.io import sha256_file
from vsa_dist.models.backbone import fold_batchnorm, load_backbone


def read_features(out: Path) -> dict[str, dict]:
    samples = {}
    for sample in wds.WebDataset(shard_paths(out), shardshuffle=False, empty_check=False):
        assert sample["__key__"] not in samples, "duplicate feature record"
        samples[sample["__key__"]] = decode_sample(sample)
    return samples


def read_images(shards: Path, splits=None) -> dict[str, dict]:
    return {s["__key__"]: {"jpg": s["jpg"], "meta": json.loads(s["json"])}
            for s in wds.WebDataset(shard_paths(shards, splits), shardshuffle=False, empty_check=False)}


def features(*args: str) -> dict:
    return vsa(["features", "--progress", "false", *args])


def test_roi_features_of_the_mini_set(mini_features, mini_shards):
    manifest = load_features_manifest(mini_features)
    assert manifest["counts"]["images"] == {"input": 200, "written": 200, "rejected": 0}
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 100, "dev": 50, "test": 50}
    settings = manifest["settings"]
    assert (settings["backbone"], settings["region_mode"], settings["proposals"]) == (
        "efficientnet-lite0",
        "roi",
        "grid",
    )
    assert (settings["input_size"], settings["mean"], settings["std"]) == (224, [127.0] * 3, [128.0] * 3)
    assert settings["num_regions"] == 19 and settings["feature_dim"] == 1280
    assert manifest["vocab"] == load_manifest(mini_shards)["vocab"]
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            assert sha256_file(mini_features / shard["shard"]) == shard["sha256"]

    images = read_images(mini_shards)
    records = read_features(mini_features)
    assert records.keys() == images.keys()
    for key, rec in records.items():
        assert rec["features"].shape == (20, 1280) and rec["features"].dtype == np.float16
        assert np.isfinite(rec["features"]).all() and rec["features"].any(axis=1).all()
        assert rec["boxes"].shape == (19, 4) and len(rec["box_scores"]) == 19
        w, h = rec["width"], rec["height"]
        assert (rec["boxes"][:, 0] >= 0).all() and (rec["boxes"][:, 2] <= w + 1e-3).all()
        assert (rec["boxes"][:, 1] >= 0).all() and (rec["boxes"][:, 3] <= h + 1e-3).all()
        assert (rec["boxes"][:, 2] > rec["boxes"][:, 0]).all() and (rec["boxes"][:, 3] > rec["boxes"][:, 1]).all()
        assert rec["sentences"] == images[key]["meta"]["sentences"] and rec["split"] == images[key]["meta"]["split"]
        assert rec["proposals"].shape == (34, 4)  # the grid, kept with the features

    # The numbers are the CNN's: row 0 is the whole image's pooled feature map, a region row is the
    # RoIAligned mean of its box, computed here by plain torchvision calls without the pipeline.
    backbone = load_backbone()
    trunk = fold_batchnorm(backbone.trunk)
    precision = settings["precision"]
    for key in list(records)[:3]:
        rec = records[key]
        image = torch.from_numpy(decode_rgb(images[key]["jpg"])).permute(2, 0, 1)[None].float()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
            fmap = trunk(backbone.normalize(image)).float()
        whole = fmap.mean(dim=(2, 3))[0].numpy()
        np.testing.assert_allclose(rec["features"][0], whole, rtol=0.05, atol=0.05)
        box = torch.from_numpy(rec["boxes"][4:5]).float()
        region = roi_align(fmap, torch.cat([torch.zeros(1, 1), box], 1), 2, 7 / 224, 2, True).mean(dim=(2, 3))[0]
        np.testing.assert_allclose(rec["features"][5], region.numpy(), rtol=0.05, atol=0.05)


def test_mirrored_features_are_the_mirrored_images_and_join_the_train_stream(tmp_path, mini_features, mini_shards,
                                                                            ray_cluster):
    """``--flip`` makes the features of each image mirrored left to right (the grid's boxes mirror with it), in a
    folder that ``train-mrnn --augment`` accepts: its train rows join the plain folder's in one stream."""
    from vsa_dist.training.config import check_augment_folder
    from vsa_dist.training.streams import TrainStream, train_dataset

    out = tmp_path / "mirrored"
    features("--shards", str(mini_shards), "--out", str(out), "--flip", "true", "--splits", "train")
    manifest = load_features_manifest(out)
    assert manifest["settings"]["flip"] is True and load_features_manifest(mini_features)["settings"]["flip"] is False
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 100}
    check_same_settings({"plain": load_features_manifest(mini_features), "mirrored": manifest})  # no error
    check_augment_folder(str(mini_features), str(out))

    plain, mirrored, images = read_features(mini_features), read_features(out), read_images(mini_shards, ["train"])
    assert mirrored.keys() == images.keys()
    backbone = load_backbone()
    trunk = fold_batchnorm(backbone.trunk)
    for key in list(mirrored)[:3]:
        rec = mirrored[key]
        x1, y1, x2, y2 = rec["boxes"].T
        # the grid is symmetric: mirroring a chosen box gives one of the plain image's candidates
        mirror_boxes = np.stack([rec["width"] - x2, y1, rec["width"] - x1, y2], 1)
        assert all(np.isclose(plain[key]["proposals"], box, atol=1e-3).all(1).any() for box in mirror_boxes)
        image = torch.from_numpy(decode_rgb(images[key]["jpg"])[:, ::-1].copy()).permute(2, 0, 1)[None].float()
        with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16,
                                                    enabled=manifest["settings"]["precision"] == "bf16"):
            whole = trunk(backbone.normalize(image)).float().mean(dim=(2, 3))[0].numpy()
        np.testing.assert_allclose(rec["features"][0], whole, rtol=0.05, atol=0.05)
        # and not the plain image's: a CNN's pooled features are not mirror-invariant
        assert np.abs(rec["features"][0].astype(np.float32) - plain[key]["features"][0]).max() > 0.1

    vocab = load_features_manifest(mini_features)["vocab"]["words"]
    assert train_dataset(str(mini_features), vocab, TrainStream(max_words=20)).count() == 100
    assert train_dataset(str(mini_features), vocab, TrainStream(max_words=20, augment=(str(out),))).count() == 200


def test_uint8_channels_last_batches_give_the_same_features(mini_images):
    """Images at the input size are stacked as uint8 pixels in channels_last order (no float copy, no layout
    conversion); resized or NCHW batches take the general path. Both must give the same numbers."""
    from vsa_dist.models.regions import RegionFeatureExtractor

    images = [torch.from_numpy(decode_rgb(p.read_bytes())).permute(2, 0, 1) for p in mini_images[:3]]
    boxes = [torch.from_numpy(grid_boxes(224, 224))] * 3
    fast = RegionFeatureExtractor(load_backbone(), channels_last=True)
    general = RegionFeatureExtractor(load_backbone(), channels_last=False)
    assert fast._batch(images, 224, torch.device("cpu")).dtype == torch.uint8
    _, _, got = fast(images, boxes)
    _, _, want = general(images, boxes)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    # a larger image is resized on the general path, also in a channels_last extractor
    larger = (
        torch.nn.functional.interpolate(images[0][None].float(), size=(300, 260), mode="bilinear")[0].round().byte()
    )
    _, _, mixed = fast([larger, images[1]], [torch.from_numpy(grid_boxes(260, 300)), boxes[1]])
    assert mixed.shape == (2, 20, 1280) and torch.isfinite(mixed.float()).all()
    torch.testing.assert_close(mixed[1].float(), got[1].float(), rtol=1e-2, atol=1e-2)


def test_crop_mode_and_resume_after_a_kill(tmp_path, mini_dir, ray_cluster, mini_features):
    shards = tmp_path / "shards"
    vsa(
        [
            "shards",
            "build",
            "--root",
            str(mini_dir),
            "--out",
            str(shards),
            "--samples-per-shard",
            "10",
            "--progress",
            "false",
        ]
    )
    out = tmp_path / "crop"
    # Batches of one shard's size, so that shards complete one by one and the kill can land between them.
    args = ["--shards", str(shards), "--out", str(out), "--regions", "crop", "--splits", "dev", "--batch-size", "10",
            "--progress", "false"]

    # A run in its own process on the same cluster, killed as soon as its first shard is recorded.
    env = {**os.environ, "RAY_ADDRESS": ray_cluster.get_runtime_context().gcs_address}
    proc = subprocess.Popen([sys.executable, str(REPO / "jobs" / "extract_features.py"), *args], env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list((out / "_state").glob("*.tar.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in (out / "_state").glob("*.tar.json")}
    assert 1 <= len(done_before) < 5, f"the kill should land mid-run, found {sorted(done_before)} recorded"
    assert not (out / "manifest.json").exists()

    manifest = features(*args)
    assert manifest["build"]["shards_reused"] == len(done_before)
    assert manifest["build"]["shards_built"] == 5 - len(done_before)
    assert manifest["counts"]["images"] == {"input": 50, "written": 50, "rejected": 0}
    assert not list(out.glob(".*.tmp"))
    crop = read_features(out)
    assert len(crop) == 50 and all(r["features"].shape == (20, 1280) for r in crop.values())

    # Same ranking, same whole-image row as roi mode; the region rows are separate CNN passes on crops.
    roi = read_features(mini_features)
    key = sorted(crop)[0]
    np.testing.assert_array_equal(crop[key]["boxes"], roi[key]["boxes"])
    np.testing.assert_array_equal(crop[key]["features"][0], roi[key]["features"][0])
    assert not np.allclose(crop[key]["features"][1:], roi[key]["features"][1:], atol=0.05)

    with pytest.raises(FeatureSettingsMismatch, match="region_mode: 'crop'"):
        check_same_settings({"crop": load_features_manifest(out), "roi": load_features_manifest(mini_features)})


def test_selective_search_proposals(tmp_path, mini_shards, mini_images, ray_cluster):
    import cv2

    image = cv2.cvtColor(cv2.imread(str(mini_images[0])), cv2.COLOR_BGR2RGB)
    boxes = selective_search(image, max_boxes=200)
    assert 19 <= len(boxes) <= 200
    assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= 224).all() and (boxes[:, 3] <= 224).all()
    assert len(grid_boxes(224, 224)) == 34

    out = tmp_path / "ss"
    manifest = features("--shards", str(mini_shards), "--out", str(out), "--proposals", "selective-search",
                        "--splits", "test")
    assert manifest["counts"]["images"] == {"input": 50, "written": 50, "rejected": 0}
    records = read_features(out)
    assert all(r["proposals"].shape[0] == r["num_proposals"] >= 19 for r in records.values())
    assert sum(r["proposals"].shape[0] != 34 for r in records.values()) > 40  # most are real search results
    assert manifest["settings"]["proposals"] == "selective-search"


def test_an_image_that_fails_is_a_reject_not_a_loss(tmp_path, mini_shards, ray_cluster):
    # A shard whose first JPEG was damaged after the shard build checked it (bit rot, a bad copy).
    shards = tmp_path / "shards"
    shards.mkdir()
    manifest = load_manifest(mini_shards)
    source = mini_shards / manifest["splits"]["dev"]["shards"][0]["shard"]
    target = shards / source.name
    with wds.TarWriter(str(target)) as writer:
        for n, sample in enumerate(wds.WebDataset(str(source), shardshuffle=False, empty_check=False)):
            record = {k: v for k, v in sample.items() if not k.startswith("__") or k == "__key__"}
            if n == 0:
                record["jpg"] = b"this is not a JPEG any more"
                broken = sample["__key__"]
            writer.write(record)
    shard_info = {**manifest["splits"]["dev"]["shards"][0], "sha256": sha256_file(target)}
    manifest["splits"] = {"dev": {**manifest["splits"]["dev"], "shards": [shard_info]}}
    (shards / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "features"
    result = features("--shards", str(shards), "--out", str(out))
    assert result["counts"]["images"] == {"input": 40, "written": 39, "rejected": 1}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert len(rejects) == 1 and rejects[0]["key"] == broken and rejects[0]["reason"] == "feature-error"
    assert rejects[0]["image"].endswith(".jpg") and "cannot identify image" in rejects[0]["detail"]
    assert broken not in read_features(out)


def test_bad_config_stops_before_any_work(tmp_path, mini_shards, capsys):
    with pytest.raises(SystemExit) as exc:
        features("--shards", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o"))
    assert exc.value.code == 2 and "no manifest.json there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        features("--shards", str(mini_shards), "--out", str(tmp_path / "o"), "--regions", "boxes")
    assert "regions 'boxes' is not one of ('roi', 'crop')" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        features("--shards", str(mini_shards), "--out", str(tmp_path / "o"), "--splits", "val")
    assert "splits ['val'] are not in" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("name,size", [("efficientnet-lite1", 240), ("efficientnet-lite2", 260)])
def test_larger_efficientnet_lite_weights_load_from_their_packages(mini_images, name, size):
    """The `backbones` extra's weights: the right input size, and real ImageNet weights — on Flickr8k images their
    top class is among lite0's top five (random or misloaded weights would almost never agree)."""
    from vsa_dist.models.regions import RegionFeatureExtractor

    small, large = load_backbone(), load_backbone(name)
    assert (large.spec.name, large.spec.input_size, large.spec.feature_dim) == (name, size, 1280)
    agree = 0
    for path in mini_images[:12]:
        image = torch.from_numpy(decode_rgb(path.read_bytes())).permute(2, 0, 1)
        resized = torch.nn.functional.interpolate(
            image[None].float(), size=(size, size), mode="bilinear", antialias=True
        )
        with torch.inference_mode():
            small_top5 = (
                small.classify(small.feature_map(small.normalize(image[None].float())).mean((2, 3))).topk(5).indices
            )
            large_top1 = large.classify(large.feature_map(large.normalize(resized)).mean((2, 3))).argmax()
        agree += int(large_top1 in small_top5[0])
    assert agree >= 8, f"{name}'s top class is in lite0's top five for only {agree} of 12 images"
    _, _, feats = RegionFeatureExtractor(large, num_regions=19)([image], [torch.from_numpy(grid_boxes(224, 224))])
    assert feats.shape == (1, 20, 1280) and torch.isfinite(feats.float()).all()


@pytest.mark.parametrize("name,dim", [("resnet18", 512), ("mobilenet_v3_small", 576)])
def test_torchvision_backbone_from_a_local_weight_file(tmp_path, name, dim):
    import torchvision

    from vsa_dist.models.regions import RegionFeatureExtractor

    weights = tmp_path / f"{name}.pth"
    torch.save(torchvision.models.get_model(name, weights=None).state_dict(), weights)
    backbone = load_backbone(f"torchvision:{name}", str(weights))
    assert backbone.spec.feature_dim == dim and backbone.spec.weights == str(weights)
    image = torch.randint(0, 256, (3, 200, 300), dtype=torch.uint8)
    boxes, scores, feats = RegionFeatureExtractor(backbone, num_regions=19)(
        [image], [torch.from_numpy(grid_boxes(300, 200))]
    )
    assert feats.shape == (1, 20, dim) and boxes.shape == (1, 19, 4) and torch.isfinite(feats.float()).all()
    with pytest.raises(ValueError, match="needs --weights"):
        load_backbone(f"torchvision:{name}")
