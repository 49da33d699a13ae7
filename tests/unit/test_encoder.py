"""The image encoder that trains with the alignment model (models/encoder.py): the cached trunk followed by its blocks
is the whole CNN, gradients reach only the blocks meant to train, and the optimizer moves each group as configured."""

from __future__ import annotations

import dataclasses
import io
import json

import numpy as np
import pytest
import torch
from PIL import Image
from PIL.JpegImagePlugin import JpegImageFile

from vsa_dist import config as cfglib
from vsa_dist.data.images import ImageRejected, model_input
from vsa_dist.features.extract import checked_extractor, image_features
from vsa_dist.features.format import FeatureSettingsMismatch, check_model_matches
from vsa_dist.models.alignment import AlignmentArgs, AlignmentModel
from vsa_dist.models.backbone import load_backbone
from vsa_dist.models.encoder import ImageEncoder, trunk_shape
from vsa_dist.models.regions import RegionFeatureExtractor, TrunkFeatureExtractor
from vsa_dist.recipes.align import AlignTask, encoder_args, model_args
from vsa_dist.recipes.config import AlignConfig
from vsa_dist.training.optim import make_optimizer, set_lr


def photo(seed: int) -> torch.Tensor:
    """A 224 px uint8 [3, H, W] picture with structure at several scales (noise alone would be a poor CNN input)."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, 7, 7, generator=generator)
    fine = torch.rand(1, 3, 56, 56, generator=generator)
    image = torch.nn.functional.interpolate(coarse, size=224, mode="bilinear") * 0.8 + \
        torch.nn.functional.interpolate(fine, size=224, mode="bilinear") * 0.2
    return (image[0] * 255).to(torch.uint8)


def pretrained_encoder(trunk_block: int) -> ImageEncoder:
    encoder = ImageEncoder("efficientnet-lite0", trunk_block)
    encoder.net.load_state_dict(load_backbone("efficientnet-lite0").trunk.net.state_dict())
    return encoder.eval()


def test_the_cached_trunk_followed_by_the_trained_blocks_is_the_whole_cnn():
    """What ``vsa features --trunk-block 12`` stores, run through the model's blocks 12-15 and head, is the vector a
    frozen-CNN feature folder holds for the same image (its whole-image row), to float rounding; a model trained from
    block 12 therefore starts exactly where the frozen model stands."""
    images = [photo(0), photo(1)]
    grid = [torch.tensor([[0.0, 0.0, 224.0, 224.0]])] * 2
    _, _, vectors = RegionFeatureExtractor(load_backbone("efficientnet-lite0"), num_regions=1)(images, grid)
    _, _, maps = TrunkFeatureExtractor(load_backbone("efficientnet-lite0"), 12)(images, grid)
    assert tuple(maps.shape) == (2, *trunk_shape("efficientnet-lite0", 12, 224)) == (2, 192, 7, 7)
    with torch.no_grad():
        rebuilt = pretrained_encoder(12).top(maps.float())
    # both sides stored as float16 on the way: the trunk maps, and the frozen folder's vectors
    assert torch.allclose(rebuilt, vectors[:, 0].float(), rtol=1e-2, atol=2e-2)
    assert not torch.allclose(rebuilt[0], rebuilt[1], atol=2e-2)  # two images, two vectors: the check can fail
    # and the model reads them as it reads that row: the same region vector either way
    args = AlignmentArgs(vocab_size=10, embed_dim=16, word_dim=8, regions=False, encoder="efficientnet-lite0",
                         trunk_block=12)
    model = AlignmentModel(args).eval()
    model.encoder.net.load_state_dict(pretrained_encoder(12).net.state_dict())
    frozen = AlignmentModel(dataclasses.replace(args, encoder="", trunk_block=0)).eval()
    frozen.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("encoder.")})
    with torch.no_grad():
        assert torch.allclose(model.embed_scored_regions(maps), frozen.embed_scored_regions(vectors), atol=1e-2)


def test_gradients_reach_only_the_blocks_meant_to_train():
    args = AlignmentArgs(vocab_size=10, embed_dim=16, word_dim=8, regions=False, encoder="efficientnet-lite0",
                         trunk_block=12)
    model = AlignmentModel(args)
    model.encoder.freeze_below(14)
    model.train()
    maps = torch.randn(4, 192, 7, 7)
    tokens = torch.randint(2, 10, (4, 5))
    model(maps, tokens).backward()
    net = model.encoder.net
    trained = {f"_blocks.{i}." for i in (14, 15)} | {"_conv_head.", "_bn1."}
    for name, parameter in net.named_parameters():
        meant = any(name.startswith(prefix) for prefix in trained)
        assert parameter.requires_grad == meant, name
        assert (parameter.grad is not None and parameter.grad.abs().sum() > 0) == meant, name
    # the head learns as before
    assert model.region_proj.weight.grad.abs().sum() > 0
    # BatchNorm kept its pretrained statistics in train mode (batchnorm "frozen": each worker's batch is small)
    assert all(not m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    model.encoder.batchnorm = "train"
    model.train()
    assert all(m.training for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_each_parameter_group_moves_at_its_own_rate_and_a_still_group_waits():
    head, cnn = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    optimizer = make_optimizer("adam", [{"params": head.parameters()},
                                        {"params": cnn.parameters(), "lr_scale": 0.1, "still_epochs": 2}],
                               1e-3, 0.9, 0.0)
    set_lr(optimizer, 1e-3, epoch=2)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, 0.0]
    set_lr(optimizer, 1e-3, epoch=3)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-3, pytest.approx(1e-4)]


def test_a_model_without_an_encoder_refuses_trunk_maps():
    model = AlignmentModel(AlignmentArgs(vocab_size=10, embed_dim=16, word_dim=8))
    with pytest.raises(ValueError, match="no CNN blocks"):
        model.embed_regions(torch.zeros(1, 192, 7, 7))


def feature_folder(path, **settings):
    """A feature folder's manifest alone (what the config's checks read), with train/dev/test images."""
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({
        "kind": "features", "settings": {"backbone": "efficientnet-lite0", "feature_dim": 1280, **settings},
        "splits": {split: {"images": 5} for split in ("train", "dev", "test")}, "vocab": {"words": ["a"]}}))
    return str(path)


def test_the_encoder_mode_and_the_feature_folder_must_agree_in_one_line(tmp_path):
    trunk, vectors = feature_folder(tmp_path / "trunk", trunk_block=12), feature_folder(tmp_path / "vectors")
    cached = {"encoder": "cached", "local_weight": 0.0, "global_weight": 1.0}
    with pytest.raises(cfglib.ConfigError, match="encoder cached needs a trunk folder"):
        cfglib.ready(AlignConfig, None, {"features": vectors, **cached})
    with pytest.raises(cfglib.ConfigError, match="need --encoder cached"):
        cfglib.ready(AlignConfig, None, {"features": trunk})
    with pytest.raises(cfglib.ConfigError, match="encoder cached trains on the whole image"):
        cfglib.ready(AlignConfig, None, {"features": trunk, "encoder": "cached"})  # the paper's region-word score
    cfg = cfglib.ready(AlignConfig, "train_align_cached", {"features": trunk})
    # its stream carries the whole trunk maps (row 0 of a [C, h, w] map would be one channel)
    assert cfg.encoder == "cached" and not AlignTask.stream(cfg).whole_image_only
    args = model_args(cfg, 10, 1280, **encoder_args(cfg, {"backbone": "efficientnet-lite0", "trunk_block": 12}))
    assert (args.encoder, args.trunk_block) == ("efficientnet-lite0", 12)
    frozen = cfglib.ready(AlignConfig, None, {"features": vectors, "regions": False})
    assert encoder_args(frozen, {"trunk_block": None}) == {} and AlignTask.stream(frozen).whole_image_only


def test_a_model_that_carries_its_cnn_refuses_another_encoders_folder_saying_which_to_give():
    trunk = {"backbone": "efficientnet-lite0", "feature_dim": 1280, "trunk_block": 12}
    with pytest.raises(FeatureSettingsMismatch, match="vsa features --trunk-block 12"):
        check_model_matches("vectors", {**trunk, "trunk_block": None}, {"feature_settings": trunk})
    with pytest.raises(FeatureSettingsMismatch, match="reads CNN vectors, not trunk maps"):
        check_model_matches("trunk", trunk, {"feature_settings": {**trunk, "trunk_block": None}})


def test_the_whole_cnn_from_the_images_is_the_frozen_cnn_before_it_learns():
    """At trunk block 0 (``encoder=full``) the model takes the images: the stem, every block and the head on uint8
    pixels give the frozen feature folder's whole-image vector; every block and the stem take a gradient."""
    images = [photo(2), photo(3)]
    grid = [torch.tensor([[0.0, 0.0, 224.0, 224.0]])] * 2
    _, _, vectors = RegionFeatureExtractor(load_backbone("efficientnet-lite0"), num_regions=1)(images, grid)
    encoder = pretrained_encoder(0)
    encoder.channels_last = True
    with torch.no_grad():
        rebuilt = encoder.top(torch.stack(images))
    assert torch.allclose(rebuilt, vectors[:, 0].float(), rtol=1e-2, atol=2e-2)
    assert not torch.allclose(rebuilt[0], rebuilt[1], atol=2e-2)
    model = AlignmentModel(AlignmentArgs(vocab_size=10, embed_dim=16, word_dim=8, regions=False,
                                         encoder="efficientnet-lite0", trunk_block=0)).train()
    model(torch.stack(images), torch.randint(2, 10, (2, 5))).backward()
    assert model.encoder.net._conv_stem.weight.grad.abs().sum() > 0
    assert model.encoder.net._blocks[0]._depthwise_conv.weight.grad.abs().sum() > 0
    model.encoder.freeze_below(3)
    assert not model.encoder.net._conv_stem.weight.requires_grad
    assert not model.encoder.net._blocks[2]._project_conv.weight.requires_grad
    assert model.encoder.net._blocks[3]._project_conv.weight.requires_grad


def jpeg(width: int, height: int) -> bytes:
    image = torch.nn.functional.interpolate(photo(4)[None].float(), size=(height, width), mode="bilinear")[0]
    buffer = io.BytesIO()
    Image.fromarray(image.permute(1, 2, 0).to(torch.uint8).numpy()).save(buffer, "JPEG", quality=95)
    return buffer.getvalue()


def test_images_decode_in_draft_mode_to_what_a_full_decode_gives_and_augment_at_random(monkeypatch):
    """A 1,000-pixel photo for a 224-pixel input decodes at a reduced scale (JPEG draft mode), and gives nearly the
    pixels of a full decode resized; a random crop and mirror change them, the evaluation's input does not move."""
    data = jpeg(1000, 800)
    full = np.asarray(Image.open(io.BytesIO(data)).convert("RGB").resize((224, 224), Image.BILINEAR))
    drafted = []
    real_draft = JpegImageFile.draft
    monkeypatch.setattr(JpegImageFile, "draft", lambda self, mode, size: drafted.append(size) or real_draft(
        self, mode, size))
    pixels = model_input(data, 224)
    assert pixels.shape == (3, 224, 224) and pixels.dtype == np.uint8
    assert drafted and min(drafted[0]) >= 224  # asked for no less than the output needs
    assert np.abs(pixels.transpose(1, 2, 0).astype(float) - full).mean() < 4  # of 255
    assert np.array_equal(model_input(data, 224), pixels)
    # the smallest crop still gets its 224 pixels: draft asks for 224 / sqrt(0.25) on the short side
    drafted.clear()
    crops = [model_input(data, 224, crop_min_area=0.25, flip=True, rng=np.random.default_rng(seed)) for seed in (0, 1)]
    assert min(drafted[0]) >= 448
    assert np.abs(crops[0].astype(float) - crops[1]).mean() > 5 and np.abs(crops[0].astype(float) - pixels).mean() > 5
    with pytest.raises(ImageRejected, match="pixels > limit"):
        model_input(data, 224, max_pixels=1000 * 799)


def test_a_model_that_runs_its_whole_cnn_takes_images_and_refuses_vectors_in_one_line(tmp_path):
    vectors = {"backbone": "efficientnet-lite0", "feature_dim": 1280, "input": None}
    with pytest.raises(FeatureSettingsMismatch, match="runs its whole CNN on the images"):
        check_model_matches("vectors", vectors, {"feature_settings": {**vectors, "input": "pixels"}})
    folder = feature_folder(tmp_path / "vectors")  # no image shards recorded
    with pytest.raises(cfglib.ConfigError, match="the image shards it was made from"):
        cfglib.ready(AlignConfig, "train_align_cached", {"features": folder, "encoder": "full"})
    with pytest.raises(cfglib.ConfigError, match="no --augment"):
        cfglib.ready(AlignConfig, "train_align_cached", {"features": folder, "encoder": "full", "augment": [folder]})
    extractor = checked_extractor({"input": "pixels", "input_size": 224})
    features, _, errors = image_features(extractor, [jpeg(300, 200), b"not an image"], ["a.jpg", "b.jpg"])
    assert features.shape == (1, 3, 224, 224) and errors[0] == "" and "image rejected" in errors[1]
    assert np.array_equal(features[0], model_input(jpeg(300, 200), 224))


def test_new_images_for_a_model_on_a_trained_cnns_features_need_that_very_cnn_not_another(tmp_path):
    settings = {"backbone": "efficientnet-lite0", "cnn_sha256": "ab" * 32, "input_size": 224}
    with pytest.raises(ValueError, match="features of a trained CNN .* does not carry it"):
        checked_extractor(settings)
    other = tmp_path / "other.pt"
    other.write_bytes(b"another checkpoint")
    with pytest.raises(ValueError, match=f"{other}: not the CNN the model's features were made with"):
        checked_extractor(settings, trained_cnn_file=str(other))
