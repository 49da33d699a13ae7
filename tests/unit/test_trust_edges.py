"""Wrong inputs that once ended in a traceback or a wait of minutes: each is now one line that names the file or the
server and why (issue 47's trials, reproduced here first)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import fails, write_untrained
from PIL import Image

from vsa_dist import config as cfglib
from vsa_dist.checkpoints import CheckpointError, load_alignment, load_generator
from vsa_dist.models.alignment import AlignmentModel
from vsa_dist.models.mrnn import MRNN
from vsa_dist.recipes import align, mrnn

MANIFEST = {"vocab": {"words": ["a", "dog", "runs"]}, "settings": {"feature_dim": 8}}


@pytest.fixture
def checkpoints(tmp_path):
    torch.manual_seed(0)
    align_cfg = cfglib.resolve(align.AlignConfig, None, {"features": "/f", "embed_dim": 6, "word_dim": 5})
    mrnn_cfg = dataclasses.replace(mrnn.MRNNConfig(), hidden=6, word_dim=5)
    return {
        "alignment": write_untrained(tmp_path / "align.pt", AlignmentModel(align.model_args(align_cfg, 5, 8)),
                                     align_cfg, MANIFEST),
        "generator": write_untrained(tmp_path / "mrnn.pt", MRNN(mrnn.model_args(mrnn_cfg, 3, 8)), mrnn_cfg, MANIFEST),
    }


def test_a_checkpoint_of_the_other_model_is_one_line_that_says_which_it_is(checkpoints):
    assert load_alignment(checkpoints["alignment"])[0].args.embed_dim == 6  # each loads as its own kind
    with pytest.raises(CheckpointError) as err:
        load_generator(checkpoints["alignment"])
    assert str(err.value) == f"{checkpoints['alignment']}: the checkpoint of an alignment model (vsa train-align), " \
                             "not of a caption generator (vsa train-mrnn)"
    with pytest.raises(CheckpointError, match="the checkpoint of a caption generator .*, not of an alignment model"):
        load_alignment(checkpoints["generator"])


def test_a_registry_look_up_without_its_server_fails_in_one_line(tmp_path, monkeypatch, capsys):
    """Port 9 (discard) on this machine: nothing listens. MLflow's own client retried for 4 minutes."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    Image.new("RGB", (64, 48), (200, 120, 40)).save(tmp_path / "photo.jpg")
    line = fails(capsys, "caption", str(tmp_path / "photo.jpg"), "--model", "models:/vsa-captioner@champion")
    assert "MLflow tracking server http://127.0.0.1:9 does not answer" in line
    line = fails(capsys, "search", "a dog", str(tmp_path), "--model", "models:/vsa-align@champion")
    assert "MLflow tracking server http://127.0.0.1:9 does not answer" in line


def test_a_python_tag_in_a_model_folder_is_refused_in_one_line(tmp_path, capsys):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "MLmodel").write_text("flavors:\n  python_function:\n    artifacts: !!python/object/apply:os.system "
                                    "['touch pwned']\n")
    Image.new("RGB", (64, 48)).save(tmp_path / "photo.jpg")
    line = fails(capsys, "caption", str(tmp_path / "photo.jpg"), "--model", str(folder))
    assert f"{folder}: MLmodel:3: refused as YAML: could not determine a constructor for the tag" in line
    assert not (tmp_path / "pwned").exists() and not (folder / "pwned").exists()


@pytest.mark.parametrize("broken", ["no tab", "no images folder"])
def test_the_pipeline_on_bad_data_is_one_line_as_shards_build_is(tmp_path, monkeypatch, capsys, broken):
    monkeypatch.setenv("VSA_RUNS_ROOT", str(tmp_path / "runs"))
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    line = "a.jpg#0 a dog runs" if broken == "no tab" else "a.jpg#0\ta dog runs"
    (data / "Flickr8k.token.txt").write_text(line + "\n")
    for split in ("train", "dev", "test"):
        (data / f"Flickr_8k.{split}Images.txt").write_text("a.jpg\n")
    if broken == "no images folder":
        (data / "images").rmdir()
    expected = "found no tab" if broken == "no tab" else "no image was written"
    assert expected in fails(capsys, "pipeline", "--data", str(data), "--progress", "false")
    assert expected in fails(capsys, "shards", "build", "--root", str(data), "--out", str(tmp_path / "shards"))
