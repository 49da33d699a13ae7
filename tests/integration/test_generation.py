"""Generator training on the mini set through Ray Train, the registry, vsa caption, serving and the champion rule."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from importlib import metadata
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch

from vsa_dist.checkpoints import read_checkpoint
from vsa_dist.data.pairs import word_index
from vsa_dist.data.splits import split_sentence_ids
from vsa_dist.eval.captions import caption_metrics
from vsa_dist.eval.regions import dangling


def test_mrnn_training_registry_caption_and_serving(tmp_path, mini_features, mini_snippets, mini_images, ray_cluster,
                                                    mlflow_server, monkeypatch, capsys):
    """Trained on full images and on regions with their snippets (the paper's region generator), resumed,
    tested, registered; captions from the registry for whole images and regions, and over HTTP."""
    from conftest import free_port
    from mlflow.tracking import MlflowClient

    from vsa_dist.cli import main as vsa

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    out = tmp_path / "mrnn"
    args = ["train-mrnn", "--features", str(mini_features), "--out", str(out), "--batch-size", "50",
            "--hidden", "128", "--word-dim", "128", "--beam-choices", "1,2", "--experiment", "test-mrnn",
            "--examples", "4", "--snippets", str(mini_snippets), "--progress", "false",
            "--register-as", "test-region-captioner"]  # its own name: other tests register vsa-captioner on this server
    first = vsa([*args, "--epochs", "2", "--test", "false"])
    second = vsa([*args, "--epochs", "3", "--resume", "true"])
    run_id = second["run_id"]
    assert first["run_id"] == run_id

    client = MlflowClient(mlflow_server)
    assert sorted(m.step for m in client.get_metric_history(run_id, "dev_cider")) == [1, 2, 3]
    assert sorted(m.step for m in client.get_metric_history(run_id, "dev_perplexity")) == [1, 2, 3]
    metrics = client.get_run(run_id).data.metrics
    assert {"test_bleu1", "test_bleu4", "test_meteor", "test_rouge_l", "test_cider"} <= set(metrics)
    assert all(0 <= metrics[f"test_{k}"] <= 1 for k in ("bleu1", "bleu4", "meteor", "rouge_l")), metrics
    perplexity = sorted(client.get_metric_history(run_id, "dev_perplexity"), key=lambda m: m.step)
    assert perplexity[-1].value < perplexity[0].value  # it learns (exact recall is the overfitting test's job)
    artifacts = {a.path for a in client.list_artifacts(run_id, "examples")}
    assert artifacts == {"examples/examples.json", "examples/examples.jpg"}
    # `vsa eval captions` on the saved best model, with the beam chosen on dev, gives the logged test numbers.
    evaluated = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features)])
    assert evaluated["beam"] == second["beam"] and evaluated["images"] == 50
    first_ten = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features),
                     "--split", "train", "--images", "10", "--beam", "1"])
    assert first_ten["split"] == "train" and first_ten["images"] == 10
    assert {k: evaluated[k] for k in second["test"]} == pytest.approx(second["test"], abs=1e-9)
    # --length-penalty ranks the finished beams by log P / length**p: a larger p never picks shorter captions
    ranked = [vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--features", str(mini_features),
                   "--split", "dev", "--beam", "2", "--length-penalty", p]) for p in ("0", "3")]
    assert [r["length_penalty"] for r in ranked] == [0.0, 3.0] and ranked[1]["mean_words"] >= ranked[0]["mean_words"]
    # An ensemble of the model with itself is the model: the same distributions, the same captions.
    doubled = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--ensemble", str(out / "best.pt"),
                   "--features", str(mini_features)])
    assert doubled["ensemble"] == [str(out / "best.pt")] * 2
    assert {k: doubled[k] for k in second["test"]} == pytest.approx(second["test"], abs=1e-9)
    champion = client.get_model_version_by_alias("test-region-captioner", "champion")
    # the tag is the dev CIDEr of the beam chosen on dev, as the summary records it (to the tag's 6 decimals)
    assert champion.run_id == run_id
    assert float(champion.tags["dev_cider"]) == pytest.approx(second["dev_cider_by_beam"][second["beam"]], abs=1e-6)

    # Self-critical fine-tuning from that model (whole images only), through the same Ray Train loop. --init is
    # given relative to the working folder, as a user types it: Ray Train's workers run in a folder of their own.
    monkeypatch.chdir(tmp_path)
    tuned = vsa(["train-mrnn", "--features", str(mini_features), "--out", str(tmp_path / "scst"), "--objective", "scst",
                 "--init", str((out / "best.pt").relative_to(tmp_path)), "--hidden", "128", "--word-dim", "128",
                 "--batch-size", "50",
                 "--epochs", "1", "--lr", "1e-4", "--beam-choices", "1", "--test", "false", "--register-as", "",
                 "--sample-temperature", "0.5", "--ema", "0.9", "--experiment", "test-mrnn", "--progress", "false",
                 # distilling a teacher on the samples: here the model it starts from, also given relative
                 "--teacher", str((out / "best.pt").relative_to(tmp_path)), "--distill", "0.5"])
    history = client.get_metric_history(tuned["run_id"], "train_sample_cider")
    assert [m.step for m in history] == [1] and history[0].value > 0
    params = client.get_run(tuned["run_id"]).data.params
    assert params["sample_temperature"] == "0.5" and params["teacher"] == str([str(out / "best.pt")])
    [distilled] = client.get_metric_history(tuned["run_id"], "train_distill")
    assert distilled.value > 0  # the teacher-to-student cross-entropy on the samples
    # with --ema rank 0 keeps a moving average of the weights: dev scored it, and best.pt holds it, not the
    # weights as trained (which the checkpoint keeps beside it, to resume)
    [last] = (tmp_path / "scst").glob("ray/*/checkpoint_*/checkpoint.pt")
    last, shipped = read_checkpoint(last, ("model", "averaged")), read_checkpoint(tmp_path / "scst" / "best.pt")
    assert all(torch.equal(shipped["model"][k], last["averaged"][k]) for k in last["model"])
    assert not all(torch.equal(last["model"][k], last["averaged"][k]) for k in last["model"])
    # it started from the trained model: one epoch at lr 1e-4 leaves its weights near that model's (a fresh model's
    # are as far from them as the weights are long). Weights, not dev CIDEr: on 50 dev images CIDEr moves too much.
    start, tuned_model = (read_checkpoint(path, ("model",))["model"]
                          for path in (out / "best.pt", tmp_path / "scst" / "best.pt"))
    moved = sum((tuned_model[k].float() - start[k].float()).norm() ** 2 for k in start) ** 0.5
    length = sum(start[k].float().norm() ** 2 for k in start) ** 0.5
    assert 0 < moved < 0.1 * length, (moved, length)
    # ...and the objective raises the reward it is given: 40 steps on 10 train images from that model, the mean
    # CIDEr-D of 20 fresh samples per image (no dropout, one seed) at least 1.5x what it was (1.9-3.1x in six seeds
    # here; the Ray run above is too short and too noisy on 100 images to show it)
    assert scst_reward_gain(out / "best.pt", mini_features, steps=40) > 1.5

    # An LSTM attending over each image's whole frame and regions: trained by the same loop on every feature
    # row; `vsa eval captions` reads the rows back for it, alone and beside the whole-image model above.
    attending = vsa(
        [
            "train-mrnn",
            "--features",
            str(mini_features),
            "--out",
            str(tmp_path / "attention"),
            "--cell",
            "lstm",
            "--attention",
            "true",
            "--hidden",
            "64",
            "--word-dim",
            "64",
            "--batch-size",
            "50",
            "--epochs",
            "1",
            "--beam-choices",
            "1",
            "--register-as",
            "",
            "--experiment",
            "test-mrnn",
            "--progress",
            "false",
        ]
    )
    evaluated = vsa(["eval", "captions", "--checkpoint", str(tmp_path / "attention" / "best.pt"),
                     "--features", str(mini_features)])
    assert {k: evaluated[k] for k in attending["test"]} == pytest.approx(attending["test"], abs=1e-9)
    mixed = vsa(["eval", "captions", "--checkpoint", str(out / "best.pt"), "--ensemble",
                 str(tmp_path / "attention" / "best.pt"), "--features", str(mini_features)])
    assert mixed["images"] == 50
    assert mixed["ensemble"] == [str(out / "best.pt"), str(tmp_path / "attention" / "best.pt")]
    assert set(second["test"]) <= set(mixed)  # every metric, from the two models' one decoding

    # Region captions: the test split's snippets (aligned before any generator is trained) are the fixed test set;
    # the region model and the attending whole-image model caption the same regions.
    test_snippets = tmp_path / "snippets-test"
    vsa(["align-snippets", "--checkpoint", str(mini_features.parent / "align-untrained.pt"), "--features",
         str(mini_features), "--out", str(test_snippets), "--splits", "test", "--beta", "0.5", "--progress", "false"])
    from vsa_dist.data.shards import read_samples, shard_paths
    from vsa_dist.eval.regions import region_items

    items = region_items(read_samples(shard_paths(test_snippets, ["test"])), min_words=2)
    assert len(items["keys"]) > 50  # several regions of each of the 50 images
    scored = {}
    for name, checkpoint in (("regions", out / "best.pt"), ("attention", tmp_path / "attention" / "best.pt")):
        scored[name] = vsa(["eval", "regions", "--checkpoint", str(checkpoint), "--snippets", str(test_snippets),
                            "--out", str(tmp_path / f"regions-{name}.json")])
        written = json.loads((tmp_path / f"regions-{name}.json").read_text())
        assert [r["region"] for r in written["captions"]] == items["keys"] == sorted(items["references"], key=items[
            "keys"].index)
        assert [r["references"] for r in written["captions"]] == [items["references"][k] for k in items["keys"]]
        np.testing.assert_allclose([r["box"] for r in written["captions"]], items["boxes"], atol=0.05)
        assert scored[name]["regions"] == len(items["keys"]) and scored[name]["images"] == 50
        assert 0 < scored[name]["bleu1"] <= 1 and scored[name]["cider"] >= 0
        assert scored[name]["dangling_endings"] == sum(dangling(r["caption"]) for r in written["captions"])
    # --beam and --length-penalty: a decoding for region captions, to be chosen on dev; recorded with the scores
    from vsa_dist.checkpoints import load_generator
    from vsa_dist.models.decoding import generate

    region_model, region_state = load_generator(out / "best.pt")
    longer = vsa(["eval", "regions", "--checkpoint", str(out / "best.pt"), "--snippets", str(test_snippets),
                  "--beam", "3", "--length-penalty", "2", "--out", str(tmp_path / "regions-longer.json")])
    expected = generate(region_model, torch.from_numpy(items["features"]).float(), region_state["vocab"], 3,
                        region_state["config"]["max_len"], 2.0)
    default = [r["caption"] for r in json.loads((tmp_path / "regions-regions.json").read_text())["captions"]]
    assert expected != default  # else the check below could not tell the decodings apart
    assert [r["caption"] for r in json.loads((tmp_path / "regions-longer.json").read_text())["captions"]] == expected
    assert (longer["beam"], longer["length_penalty"]) == (3, 2.0)
    assert scored["regions"]["length_penalty"] == region_state["config"]["length_penalty"]

    # vsa caption: a folder of images, through the registry on the server.
    folder = tmp_path / "images"
    folder.mkdir()
    for image in mini_images[:3]:
        (folder / image.name).write_bytes(image.read_bytes())
    capsys.readouterr()
    printed = vsa(["caption", str(folder), "--model", "models:/test-region-captioner@champion"])
    assert [p for p, _ in printed] == [str(folder / i.name) for i in mini_images[:3]]
    assert all(caption.split() for _, caption in printed)
    assert capsys.readouterr().out.count("\t") == 3
    # --regions: the two best regions of each image too, each with its box inside the image
    described = vsa(["caption", str(folder), "--model", "models:/test-region-captioner@champion", "--regions", "2"])
    lines = capsys.readouterr().out.strip().split("\n")
    assert len(described) == len(lines) == 9 and [p for p, _ in described[::3]] == [p for p, _ in printed]
    for line in lines[1:3] + lines[4:6]:
        _, box, region_caption = line.split("\t")
        x1, y1, x2, y2 = map(float, box.split(","))
        assert 0 <= x1 < x2 <= 224 and 0 <= y1 < y2 <= 224 and region_caption.split()
    # --format jsonl: an object per image, with its regions; a PNG in a subfolder is found too; --html: the page
    from PIL import Image

    (folder / "more").mkdir()
    Image.open(mini_images[3]).save(folder / "more" / "photo.png")
    page = tmp_path / "captions.html"
    vsa(["caption", str(folder), "--model", "models:/test-region-captioner@champion", "--regions", "2",
         "--format", "jsonl", "--html", str(page)])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["image"] for r in records] == [p for p, _ in printed] + [str(folder / "more" / "photo.png")]
    assert [r["caption"] for r in records[:3]] == [c for _, c in printed]
    assert all(len(r["regions"]) == 2 and len(r["regions"][0]["box"]) == 4 for r in records)
    text = page.read_text()
    assert text.count("<figure>") == 4 and text.count("<rect ") == 8 and printed[0][1] in text

    # mlflow models serve: a base64 JPEG posted over HTTP gets the same caption back.
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "-m",
            "models:/test-region-captioner@champion",
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
        ],
        env={
            **os.environ,
            "MLFLOW_TRACKING_URI": mlflow_server,  # it execs uvicorn by name
            "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}",
        },
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(mini_images[0].read_bytes()).decode()]]}})
        deadline, answer = time.time() + 180, None
        while time.time() < deadline and answer is None:
            try:
                request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body.encode(),
                                                 headers={"Content-Type": "application/json"})
                answer = json.loads(urllib.request.urlopen(request, timeout=30).read())
            except urllib.error.HTTPError as err:
                raise AssertionError(f"the server answered {err.code}: {err.read()[:2000]!r}") from err
            except OSError:  # not listening yet
                assert server.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        assert answer is not None, (tmp_path / "serve.log").read_text()[-3000:]
        # the shape docs/generation.md shows: a record per image, its caption or its error
        assert answer == {"predictions": [{"caption": printed[0][1], "error": ""}]}

        # the model's own input example, as MLflow saved it for serving, is a request the server answers
        folder = Path(mlflow.artifacts.download_artifacts("models:/test-region-captioner@champion"))
        example = (folder / "serving_input_example.json").read_bytes()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=example,
                                         headers={"Content-Type": "application/json"})
        answer = json.loads(urllib.request.urlopen(request, timeout=60).read())
        assert len(answer["predictions"]) == 1 and answer["predictions"][0]["caption"].strip()
        # requirements a virtualenv can install: installed distributions, pinned; vsa_dist travels in code/
        requirements = [line for line in (folder / "requirements.txt").read_text().splitlines()
                        if line and not line.startswith("#")]
        assert requirements and all(metadata.version(line.split("==")[0]) == line.split("==")[1]
                                    for line in requirements), requirements
        assert not any(line.startswith(("vsa-dist", "vsa_dist", "colorama", "ray")) for line in requirements)
        assert (folder / "code" / "vsa_dist" / "serving.py").is_file()
    finally:
        server.terminate()
        server.wait(timeout=30)


def scst_reward_gain(checkpoint: Path, features: Path, steps: int, images: int = 10, seed: int = 0) -> float:
    """Self-critical steps (Adam 1e-3, 10 samples an image) on a few train images: the mean sample reward after
    over the mean before."""
    from vsa_dist.checkpoints import load_generator
    from vsa_dist.data.splits import load_split
    from vsa_dist.eval.cider import CiderD
    from vsa_dist.models.losses import self_critical_loss

    model, state = load_generator(checkpoint)
    index, max_words = word_index(state["vocab"]), state["config"]["max_words"]
    train = load_split(features, "train", index, max_words, whole_image_only=True)
    image_features, references = (torch.from_numpy(train[k][:images]) for k in ("features", "tokens"))
    reward = CiderD(split_sentence_ids(features, "train", index, max_words))

    def mean_reward() -> float:
        torch.manual_seed(1234)
        model.eval()
        with torch.no_grad():
            return self_critical_loss(model, image_features.float(), references.long(), reward, 20, model.args.end,
                                      20)[1]["reward"]

    before = mean_reward()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.manual_seed(seed)
    model.train()
    for _ in range(steps):
        loss, _ = self_critical_loss(model, image_features.float(), references.long(), reward, 10, model.args.end, 20)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return mean_reward() / before


def test_champion_moves_only_to_a_better_model_on_the_same_dev_data(mlflow_server, capsys, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)  # the store the stages (and the printed command) use

    from vsa_dist.serving import dev_data_id, move_alias_if_better

    client, name = MlflowClient(mlflow_server), "test-alias-rules"
    client.create_registered_model(name)
    dev = {"image_ids": ["a", "b"], "references": [["a dog runs"], ["a cat sits", "a cat"]]}
    same, other = dev_data_id(dev), dev_data_id({**dev, "references": [["a dog runs"], ["a cat sits"]]})
    assert same == dev_data_id({"image_ids": ("a", "b"), "references": [("a dog runs",), ("a cat sits", "a cat")]})
    assert same == dev_data_id({"image_ids": ["b", "a"], "references": [["a cat sits", "a cat"], ["a dog runs"]]})
    assert same != other
    run = client.create_run(client.create_experiment("test-alias-rules"))
    moves = []
    # 0.4000000000000001: the holder's own score come back with float noise (a resumed run whose best epoch did
    # not change) is a tie at the tags' 6 decimals, not a better model
    for cider, data in ((0.30, same), (0.20, same), (0.40, same), (0.4000000000000001, same), (0.90, other)):
        version = client.create_model_version(
            name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
        ).version
        client.set_model_version_tag(name, version, "dev_cider", str(cider))
        client.set_model_version_tag(name, version, "dev_data", data)
        moves.append(move_alias_if_better(client, name, "champion", version, cider, data))
    assert moves == [True, False, True, False, False]
    assert client.get_model_version_by_alias(name, "champion").version == "3"
    out = capsys.readouterr().out
    # the better model on other dev data: the line says exactly how to promote it, and that line does it
    assert "was chosen on other dev data" in out
    promote = out.split("To make version 5 @champion: ", 1)[1].splitlines()[0]
    assert promote == f"MLFLOW_TRACKING_URI={mlflow_server} vsa models promote {name} 5"
    # run as printed, with this interpreter's vsa standing for the user's (the one with vsa-dist installed)
    subprocess.run(promote.replace(" vsa ", f" {sys.executable} -m vsa_dist.cli ", 1), shell=True, check=True,
                   cwd=tempfile.gettempdir())
    assert client.get_model_version_by_alias(name, "champion").version == "5"


def test_vsa_models_lists_versions_with_their_scores_and_promotes_one(mlflow_server, monkeypatch, capsys):
    """`vsa models`: each version with its aliases, data set, dev and test scores and training minutes; `vsa models
    promote` moves an alias and says so; a wrong name or version is one line naming what there is."""
    from conftest import fails
    from mlflow import MlflowClient

    from vsa_dist.cli import main as vsa

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client, name = MlflowClient(mlflow_server), "test-models-captioner"
    client.create_registered_model(name)
    experiment = client.create_experiment("test-vsa-models")
    for cider, minutes in ((0.31, 4.0), (0.52, 9.5)):
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "minutes", minutes / 2, step=0)
        client.log_metric(run.info.run_id, "minutes", minutes, step=1)
        client.log_metric(run.info.run_id, "test_cider", cider)
        version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
        client.set_model_version_tag(name, version.version, "dev_cider", str(cider - 0.01))
        client.set_model_version_tag(name, version.version, "dataset", "flickr8k")
    client.set_registered_model_alias(name, "champion", "1")
    capsys.readouterr()
    rows = vsa(["models", name])
    table = capsys.readouterr().out
    assert [row["version"] for row in rows] == [2, 1] and rows[1]["aliases"] == ["champion"]
    assert rows[0] | {"registered": "", "run_id": ""} == {
        "name": name, "version": 2, "aliases": [], "dataset": "flickr8k", "dev": {"dev CIDEr": 51.0},
        "test": {"CIDEr": 52.0}, "train_minutes": 9.5, "registered": "", "run_id": ""}
    assert table.splitlines()[0].split() == ["model", "aliases", "data", "dev", "test", "train", "min", "registered"]
    assert f"{name}/1  @champion" in table and "dev CIDEr 30" in table and "CIDEr 52" in table

    row = vsa(["models", "promote", name, "2"])
    assert row["aliases"] == ["champion"] and client.get_model_version_by_alias(name, "champion").version == "2"
    assert f"{name}@champion is now version 2 (was version 1)" in capsys.readouterr().out
    assert f"{name} has no version 7 (versions: 1, 2)" in fails(capsys, "models", "promote", name, "7")
    assert "no model named 'test-no-such' is registered" in fails(capsys, "models", "promote", "test-no-such", "1")
    assert "no model named 'test-no-such' is registered" in fails(capsys, "models", "test-no-such")
    assert "vsa models promote NAME VERSION" in fails(capsys, "models", "promote", name)


def test_a_default_alias_no_version_holds_is_one_line_naming_what_the_registry_holds(mlflow_server, monkeypatch,
                                                                                     capsys, tmp_path):
    """The smoke test's models hold @smoke: a command left at its @champion default says so, and what to run."""
    from conftest import fails
    from mlflow import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    client, name = MlflowClient(mlflow_server), "test-smoke-captioner"
    client.create_registered_model(name)
    run = client.create_run(client.create_experiment("test-smoke-alias"))
    version = client.create_model_version(name, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id)
    client.set_registered_model_alias(name, "smoke", version.version)
    (tmp_path / "photo.jpg").write_bytes(b"not needed: the model is looked up first")
    line = fails(capsys, "caption", str(tmp_path / "photo.jpg"), "--model", f"models:/{name}@champion")
    assert f"no version of {name} holds @champion: @smoke is version 1" in line, line
    assert "the smoke test's" in line and "--preset pipeline_quick" in line, line
    line = fails(capsys, "caption", str(tmp_path / "photo.jpg"), "--model", "models:/test-no-such-model@champion")
    assert "no model named test-no-such-model is registered" in line, line


def test_bad_generator_configs_stop_before_any_work(tmp_path, mini_features, capsys):
    from vsa_dist.cli import main as vsa

    generator = tmp_path / "generator.pt"
    generator.write_bytes(b"")  # the region evaluation checks its snippet folder before it reads the checkpoint
    cases = [
        (["eval", "regions", "--checkpoint", str(generator), "--snippets", str(mini_features)],
         "not a snippet folder with a test split (vsa align-snippets --splits test)"),
        (["eval", "regions", "--checkpoint", str(generator), "--snippets", str(tmp_path / "nowhere")],
         "no manifest.json there (make the folder with vsa align-snippets --splits test)"),
        (["train-mrnn", "--features", str(mini_features), "--cell", "gru"], "cell 'gru' is not one of"),
        (["train-mrnn", "--features", str(tmp_path / "nowhere")], "no manifest.json there"),
        (["train-mrnn", "--features", str(mini_features), "--beam-choices", "0,3"], "beam_choices"),
        (
            ["train-mrnn", "--features", str(mini_features), "--label-smoothing", "1"],
            "label_smoothing 1.0 is outside its range [0, 1)",
        ),
        (["train-mrnn", "--features", str(mini_features), "--objective", "scst"], "objective scst needs --init"),
        (
            ["train-mrnn", "--features", str(mini_features), "--augment", str(tmp_path)],
            "augment: " + str(tmp_path / "manifest.json") + ": no feature manifest",
        ),
        (["train-mrnn", "--features", str(mini_features), "--attention", "true"], "attention needs cell lstm"),
        (
            ["train-mrnn", "--features", str(mini_features), "--teacher", str(generator)],
            "--teacher and --distill go together, with objective scst",
        ),
        (
            ["train-mrnn", "--features", str(mini_features), "--objective", "scst", "--init", str(tmp_path / "x.pt")],
            "x.pt: no such checkpoint",
        ),
        (
            [
                "train-mrnn",
                "--features",
                str(mini_features),
                "--objective",
                "scst",
                "--init",
                str(mini_features / "manifest.json"),
            ],
            "manifest.json: not a torch checkpoint",
        ),
        (["caption", str(tmp_path / "missing.jpg")], "missing.jpg: no such file or folder"),
        (["caption", str(tmp_path)], "no images in this folder or its subfolders"),
        (
            ["eval", "captions", "--checkpoint", str(tmp_path / "best.pt"), "--features", str(mini_features)],
            "no such file",
        ),
        (
            [
                "eval",
                "captions",
                "--checkpoint",
                str(mini_features / "manifest.json"),
                "--ensemble",
                str(tmp_path / "other.pt"),
                "--features",
                str(mini_features),
            ],
            "ensemble checkpoint",
        ),
    ]
    for argv, message in cases:
        with pytest.raises(SystemExit) as stopped:
            vsa(argv)
        assert stopped.value.code == 2, argv
        assert message in capsys.readouterr().err, argv


# pycocoevalcap runs Java (PTB tokenizer, METEOR): slow for the unit tier
def test_caption_metrics_match_hand_computation_and_pycocoevalcap():
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    references = {"1": ["The dog barks.", "A dog is barking loudly"], "2": ["two men play football on grass"]}
    candidates = {"1": "the the the dog", "2": "two men play football on grass"}
    ours = caption_metrics(references, candidates)
    # BLEU-1 by hand, pooled over the corpus: clipped matches (the 1 + dog 1) + 6 = 8 of 4 + 6 = 10 words;
    # candidate length 10 against the closest reference lengths 3 + 6 = 9: no brevity penalty.
    assert ours["bleu1"] == pytest.approx(0.8, abs=1e-6)
    assert ours["bleu_length_ratio"] == pytest.approx(10 / 9)
    assert caption_metrics(references, {"1": "dog", "2": "two men"})["bleu_length_ratio"] == pytest.approx(3 / 9)
    # ROUGE-L of a candidate equal to its reference is 1; the other is LCS 2 ("the dog") of 4 and 3 words.
    precision, recall, beta = 2 / 4, 2 / 3, 1.2
    f_hand = (1 + beta ** 2) * precision * recall / (recall + beta ** 2 * precision)
    assert ours["rouge_l"] == pytest.approx((1 + f_hand) / 2, abs=1e-6)

    # The rest exactly as pycocoevalcap's own COCOEvalCap computes them.
    tokenizer = PTBTokenizer()
    gts = tokenizer.tokenize({k: [{"caption": c} for c in v] for k, v in references.items()})
    res = tokenizer.tokenize({k: [{"caption": v}] for k, v in candidates.items()})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert [ours[f"bleu{n}"] for n in range(1, 5)] == pytest.approx(bleu, abs=1e-9)
    assert ours["meteor"] == pytest.approx(Meteor().compute_score(gts, res)[0], abs=1e-9)
    assert ours["rouge_l"] == pytest.approx(Rouge().compute_score(gts, res)[0], abs=1e-9)
    assert ours["cider"] == pytest.approx(Cider().compute_score(gts, res)[0], abs=1e-9)
