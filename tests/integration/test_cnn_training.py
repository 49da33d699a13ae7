"""An alignment model that trains its CNN on the mini set, its upper blocks on trunk maps (``--encoder cached``) or the
whole network from the image shards (``--encoder full``): Ray Train DDP, the CNN restored on resume, and every command
that embeds images using the model's own CNN."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import fails

from vsa_dist.checkpoints import load_alignment, read_checkpoint
from vsa_dist.data.images import model_input
from vsa_dist.data.pairs import word_index
from vsa_dist.data.text import tokenize
from vsa_dist.models.backbone import load_backbone
from vsa_dist.models.tokens import UNK


def last_checkpoint(out: Path) -> dict:
    """The newest epoch checkpoint Ray Train kept for the run in ``out``."""
    newest = max(out.glob("ray/**/checkpoint.pt"), key=lambda path: path.stat().st_mtime_ns)
    return read_checkpoint(newest, ("model", "epoch"))


def cnn_weights(state: dict) -> dict[str, torch.Tensor]:
    return {k.removeprefix("encoder.net."): v for k, v in state.items() if k.startswith("encoder.net.")}


def test_a_model_that_trains_its_cnn_blocks_resumes_them_and_ranks_and_serves_with_them(
        tmp_path, mini_trunk, mini_features, mini_images, ray_cluster, mlflow_server, monkeypatch, capsys):
    import mlflow
    import pandas as pd

    from vsa_dist.cli import main as vsa
    from vsa_dist.features.extract import checked_extractor, image_features
    from vsa_dist.stages.search import load_searcher

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "align"
    args = ["train-align", "--preset", "train_align_modern", "--features", str(mini_trunk), "--out", str(out),
            "--encoder", "cached", "--local-weight", "0", "--all-sentences", "true", "--batch-size", "20",
            "--workers", "2", "--hardest-warmup-epochs", "1", "--cnn-lr", "1e-3", "--experiment", "test-align-cnn",
            "--register-as", "vsa-align-cnn", "--progress", "false"]
    vsa([*args, "--epochs", "2", "--test", "false"])
    pretrained = load_backbone("efficientnet-lite0").trunk.net.state_dict()
    trained = last_checkpoint(out)
    assert trained["epoch"] == 2
    blocks = cnn_weights(trained["model"])
    # the cached blocks never move; the ones from the trunk block on and the head conv learned
    assert all(torch.equal(blocks[k], pretrained[k]) for k in pretrained if k.startswith(("_blocks.11.", "_conv_stem")))
    assert not torch.equal(blocks["_blocks.12._project_conv.weight"], pretrained["_blocks.12._project_conv.weight"])
    assert not torch.equal(blocks["_conv_head.weight"], pretrained["_conv_head.weight"])

    # Resume: epoch 3 starts from epoch 2's CNN, not the pretrained one (held still at cnn_lr 0, it ends there)
    second = vsa([*args, "--epochs", "3", "--resume", "true", "--cnn-lr", "0"])
    resumed = last_checkpoint(out)
    assert resumed["epoch"] == 3
    assert all(torch.equal(value, blocks[k]) for k, value in cnn_weights(resumed["model"]).items())

    # What it ranks with: its own blocks. An image's score through the search command equals the model's own
    # computation from the image's trunk maps, and differs from the one the pretrained blocks would give.
    model, state = load_alignment(out / "best.pt")
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in mini_images[:6]:
        (photos / image.name).write_bytes(image.read_bytes())
    capsys.readouterr()
    hits = vsa(["search", "a dog runs on the grass", str(photos), "--model", str(out / "best.pt"), "--top", "6",
                "--format", "jsonl"])
    files = sorted(photos.glob("*.jpg"))
    maps, _, _ = image_features(checked_extractor(state["feature_settings"]), [p.read_bytes() for p in files],
                                [p.name for p in files])
    searcher = load_searcher(str(out / "best.pt"))
    with torch.no_grad():
        vectors = model.embed_scored_regions(torch.from_numpy(maps)).half().numpy()
    own = dict(zip([p.name for p in files], searcher.image_scores(vectors, "a dog runs on the grass")))
    assert {Path(h["image"]).name: h["score"] for h in hits} == pytest.approx(own, abs=1e-3)
    searcher.model.encoder.net.load_state_dict(pretrained)
    with torch.no_grad():
        other = searcher.image_scores(searcher.model.embed_scored_regions(torch.from_numpy(maps)).half().numpy(),
                                      "a dog runs on the grass")
    assert np.abs(other - np.array(list(own.values()))).max() > 1e-2

    # A folder of CNN vectors is another encoder's: refused in one line that says what to give it
    line = fails(capsys, "eval", "retrieval", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features))
    assert "--trunk-block 12" in line, line
    line = fails(capsys, "align-snippets", "--checkpoint", str(out / "best.pt"), "--features", str(mini_trunk),
                 "--out", str(tmp_path / "snippets"))
    assert "no regions to align snippets to" in line, line

    # The registered model (the resumed run's) scores trunk maps with its blocks, as its checkpoint does
    scorer = mlflow.pyfunc.load_model(f"models:/vsa-align-cnn/{second['registered']['version']}")
    sentence = "a dog runs on the grass"
    served = scorer.predict(pd.DataFrame({"sentence": [sentence],
                                          "features": [maps[0].astype(np.float32).tolist()]}))["score"][0]
    ids = [word_index(state["vocab"]).get(word, UNK) for word in tokenize(sentence)]
    with torch.no_grad():
        regions = model.embed_scored_regions(torch.from_numpy(maps[:1].astype(np.float32)))
        expected = model.score(regions, *model.embed_words(torch.tensor([ids])))[0, 0].item()
    assert served == pytest.approx(expected, rel=1e-5)


def test_a_model_that_trains_its_whole_cnn_from_the_image_shards_resumes_it_and_evaluates_with_it(
        tmp_path, mini_features, mini_images, ray_cluster, mlflow_server, monkeypatch, capsys):
    """``--encoder full``: the images decoded, cropped and mirrored by Ray Data, the whole CNN (stem included) trained
    in two DDP workers; restored on resume; and ``vsa eval`` and ``vsa search`` run it on the images."""
    import json

    from vsa_dist.cli import main as vsa
    from vsa_dist.stages.search import load_searcher

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "full"
    args = ["train-align", "--preset", "train_align_cached", "--features", str(mini_features), "--out", str(out),
            "--encoder", "full", "--crop-min-area", "0.5", "--batch-size", "16", "--workers", "2", "--cnn-lr", "1e-3",
            "--experiment", "test-align-full", "--register-as", "", "--progress", "false"]
    vsa([*args, "--epochs", "1", "--test", "false"])
    pretrained = load_backbone("efficientnet-lite0").trunk.net.state_dict()
    trained = last_checkpoint(out)
    cnn = cnn_weights(trained["model"])
    for name in ("_conv_stem.weight", "_blocks.0._depthwise_conv.weight", "_conv_head.weight"):
        assert not torch.equal(cnn[name], pretrained[name]), name  # every part of it learned
    summary = vsa([*args, "--epochs", "2", "--resume", "true", "--cnn-lr", "0"])
    resumed = last_checkpoint(out)
    assert resumed["epoch"] == 2
    assert all(torch.equal(value, cnn[k]) for k, value in cnn_weights(resumed["model"]).items())

    # vsa eval decodes the test images from the shards the feature folder was made from, as the stage's test did
    capsys.readouterr()
    vsa(["eval", "retrieval", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features)])
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["annotation"] == pytest.approx(summary["test"]["annotation"])
    assert evaluated["search"] == pytest.approx(summary["test"]["search"])

    # vsa search embeds new photos with the trained CNN: its scores are the model's own on the decoded images
    photos = tmp_path / "photos"
    photos.mkdir()
    for image in mini_images[:4]:
        (photos / image.name).write_bytes(image.read_bytes())
    hits = vsa(["search", "a dog runs on the grass", str(photos), "--model", str(out / "best.pt"), "--top", "4",
                "--format", "jsonl"])
    model, _ = load_alignment(out / "best.pt")
    searcher = load_searcher(str(out / "best.pt"))
    files = sorted(photos.glob("*.jpg"))
    images = torch.from_numpy(np.stack([model_input(p.read_bytes(), 224) for p in files]))
    with torch.no_grad():
        own = searcher.image_scores(model.embed_scored_regions(images).half().numpy(), "a dog runs on the grass")
    assert {Path(h["image"]).name: h["score"] for h in hits} == pytest.approx(
        dict(zip([p.name for p in files], own)), abs=1e-3)
