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
from vsa_dist.io import sha256_file
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
        tmp_path, mini_shards, mini_features, mini_images, ray_cluster, mlflow_server, monkeypatch, capsys):
    """``--encoder full``: the images decoded, cropped and mirrored by Ray Data, the whole CNN (stem included) trained
    in two DDP workers; restored on resume; ``vsa eval`` and ``vsa search`` run it on the images; and ``vsa features
    --cnn-from`` extracts with it, for a generator on the trained encoder's features."""
    import json

    from vsa_dist.cli import main as vsa
    from vsa_dist.stages.search import load_searcher

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "full"
    args = ["train-align", "--preset", "train_align_full", "--features", str(mini_features), "--out", str(out),
            "--crop-min-area", "0.5", "--batch-size", "16", "--workers", "2", "--cnn-lr", "1e-3",
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

    # vsa features --cnn-from: the trained CNN's vectors, a folder of another encoder (its settings say which)
    trained_features = tmp_path / "features-trained"
    vsa(["features", "--shards", str(mini_shards), "--out", str(trained_features), "--cnn-from", str(out / "best.pt"),
         "--splits", "test", "--progress", "false"])
    manifest = json.loads((trained_features / "manifest.json").read_text())
    assert manifest["settings"]["cnn_sha256"] == sha256_file(out / "best.pt")
    from vsa_dist.data.splits import load_split
    trained_rows = load_split(trained_features, "test", {}, 1, whole_image_only=True)
    pretrained_rows = load_split(mini_features, "test", {}, 1, whole_image_only=True)
    # a folder holds its images in the order its extraction wrote them: compare image by image
    assert sorted(trained_rows["image_ids"]) == sorted(pretrained_rows["image_ids"])
    row_of = {image_id: row for row, image_id in enumerate(trained_rows["image_ids"])}
    trained_rows["features"] = trained_rows["features"][[row_of[i] for i in pretrained_rows["image_ids"]]]
    images = torch.from_numpy(load_split(mini_features, "test", {}, 1, image_size=224)["features"][:8])
    with torch.no_grad():
        own = torch.nn.functional.normalize(model.encoder.top(images), dim=-1)

    def agreement(rows) -> float:  # mean cosine of a folder's whole-image rows with the model's own vectors
        rows = torch.nn.functional.normalize(torch.from_numpy(rows[:8]).float(), dim=-1)
        return float((rows * own).sum(dim=-1).mean())

    # the same CNN up to decoding and bf16 rounding; the pretrained CNN's vectors are another encoder's
    assert agreement(trained_rows["features"]) > 0.97
    assert agreement(trained_rows["features"]) > agreement(pretrained_rows["features"]) + 0.02
    line = fails(capsys, "eval", "retrieval", "--checkpoint", str(out / "best.pt"), "--features",
                 str(trained_features), "--split", "test")
    assert "not made the way" in line and "cnn_sha256" in line, line


def test_the_pipeline_with_a_preset_that_trains_the_cnn_blocks_stores_their_trunk_maps_first(
        tmp_path, mini_dir, ray_cluster, monkeypatch, capsys):
    """``vsa pipeline --align-preset train_align_cached`` (``pipeline_finetuned``'s path): two more stages store every
    image's trunk maps and the train images' mirrored ones, the alignment model trains its blocks on them, the
    generator reads the features of the CNN it trained, and the report scores its examples with those blocks. The
    registered captioner carries that CNN: ``vsa caption`` embeds a new photo as its training features were made."""
    import json
    import shutil

    from vsa_dist import serving
    from vsa_dist.cli import main as vsa
    from vsa_dist.data.splits import load_split
    from vsa_dist.features.extract import image_features
    from vsa_dist.registry import resolve_model

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    vsa(["pipeline", "--data", str(mini_dir), "--run-dir", str(run), "--align-preset", "train_align_cached",
         "--align-epochs", "1", "--align-batch-size", "20", "--mrnn-preset", "train_mrnn_quick", "--mrnn-epochs", "1",
         "--progress", "false"])
    record = json.loads((run / "summary.json").read_text())
    assert list(record["stage_minutes"]) == ["shards", "features", "trunk", "trunk_mirrored", "align",
                                             "features_trained", "mrnn", "report"]
    trunk, mirrored = (json.loads((run / name / "manifest.json").read_text()) for name in ("trunk12", "trunk12-flip"))
    assert trunk["settings"]["trunk_block"] == 12 and sorted(trunk["splits"]) == ["dev", "test", "train"]
    assert mirrored["settings"]["flip"] and list(mirrored["splits"]) == ["train"]
    state = read_checkpoint(run / "align" / "best.pt", ("model", "config", "feature_settings"))
    assert state["feature_settings"]["trunk_block"] == 12 and state["config"]["augment"] == [str(run / "trunk12-flip")]
    assert record["align"]["test"]["annotation"]["r1"] >= 0 and "Top-5 sentences" in (run / "report.html").read_text()

    # the generator read the trained CNN's features, and its registered model carries that CNN (the align checkpoint)
    trained = json.loads((run / "features-trained" / "manifest.json").read_text())
    assert trained["settings"]["cnn_sha256"] == sha256_file(run / "align" / "best.pt")
    caption_state = read_checkpoint(run / "mrnn" / "best.pt", ("feature_settings",))
    assert caption_state["feature_settings"]["cnn_sha256"] == trained["settings"]["cnn_sha256"]
    uri = "models:/vsa-captioner@smoke"
    captioner = serving.load_captioner(resolve_model(uri))
    assert sha256_file(Path(captioner.extractor.settings.cnn_from)) == trained["settings"]["cnn_sha256"]
    rows = load_split(run / "features-trained", "test", {}, 1, whole_image_only=True)
    pretrained_rows = load_split(run / "features", "test", {}, 1, whole_image_only=True)
    names = rows["file_names"][:6]
    own, _, errors = image_features(captioner.extractor, [(mini_dir / "images" / n).read_bytes() for n in names],
                                    names)
    assert errors == [""] * len(names)

    def agreement(folder_rows, names) -> float:  # mean cosine of the captioner's whole-image vectors with a folder's
        row_of = {name: row for row, name in enumerate(folder_rows["file_names"])}
        theirs = torch.from_numpy(folder_rows["features"][[row_of[n] for n in names]]).float().reshape(len(names), -1)
        mine = torch.from_numpy(own[:, 0]).float()
        return float(torch.nn.functional.cosine_similarity(mine, theirs, dim=-1).mean())

    # the trained CNN's vectors up to decoding and bf16 rounding; never the pretrained CNN's
    assert agreement(rows, names) > 0.97 and agreement(rows, names) > agreement(pretrained_rows, names) + 0.02
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in names[:2]:
        shutil.copy(mini_dir / "images" / name, photos / name)
    capsys.readouterr()
    captioned = vsa(["caption", str(photos), "--model", uri])
    assert len(captioned) == 2 and all(caption for _, caption in captioned)
    assert "vsa caption: model vsa-captioner/1 (@smoke" in capsys.readouterr().err

    # a generator on those features cannot be registered without the CNN they came from: one line, before training
    (run / "align" / "best.pt").rename(run / "align" / "moved.pt")
    line = fails(capsys, "train-mrnn", "--features", str(run / "features-trained"), "--out", str(tmp_path / "again"))
    assert "which is gone: the captioner cannot carry it" in line and "--register-as ''" in line, line
