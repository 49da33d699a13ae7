"""`vsa report`: the page is built from real models, features, shards and MLflow runs, and a real headless
Chromium loads it with every image decoded and no error."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess

import mlflow
import pytest
from conftest import untrained_alignment_checkpoint, untrained_generator_checkpoint
from PIL import Image

from vsa_dist.data.pairs import word_index
from vsa_dist.data.splits import load_split


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if found is None:
        pytest.fail("the report test needs Chromium: scripts/setup.sh installs it (apt-get install chromium) as root")
    return found


def open_in_browser(page, screenshot=None) -> tuple[dict[str, str], str]:
    """Load the page headless; returns the <body> data attributes after load and the browser's log."""
    command = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
               "--virtual-time-budget=10000"]
    command += [f"--screenshot={screenshot}", "--window-size=1280,2400"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*command, page.as_uri()], capture_output=True, text=True, timeout=120)
    body = re.search(r"<body([^>]*)>", proc.stdout)
    attributes = dict(re.findall(r'data-([a-z-]+)="([^"]*)"', body.group(1))) if body else {}
    return attributes, proc.stderr


# what the stages' summary.json files hold after a tested run: the page puts them under the paper's row
TESTED = {"align": {"train_minutes": 3.25, "test": {"annotation": {"r1": 17.3, "r5": 40.0, "r10": 55.0, "medr": 8.0},
                                                   "search": {"r1": 11.0, "r5": 33.0, "r10": 45.0, "medr": 12.0}}},
          "mrnn": {"test": {"bleu1": 0.6, "bleu2": 0.41, "bleu3": 0.28, "bleu4": 0.19, "meteor": 0.19,
                            "rouge_l": 0.45, "cider": 0.4321}}}


def test_report_renders_in_a_real_browser(mini_features, tmp_path, monkeypatch, ray_cluster):
    from vsa_dist.cli import main as vsa

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    # artifacts under tmp_path: the Default experiment of a new store would put them in ./mlruns of the checkout
    experiment = mlflow.create_experiment("report", artifact_location=(tmp_path / "artifacts").as_uri())
    for stage, metrics in (("align", ("dev_rsum", "train_loss")), ("mrnn", ("dev_perplexity", "dev_cider"))):
        (run / stage).mkdir(parents=True)
        with mlflow.start_run(experiment_id=experiment) as active:
            for epoch in (1, 2, 3):
                mlflow.log_metrics({key: float(epoch * (i + 1)) for i, key in enumerate(metrics)}, step=epoch)
        (run / stage / "summary.json").write_text(json.dumps({"run_id": active.info.run_id, **TESTED[stage]}))
    untrained_alignment_checkpoint(mini_features, run / "align" / "best.pt")
    untrained_generator_checkpoint(mini_features, run / "mrnn" / "best.pt")

    figure = tmp_path / "docs" / "examples.jpg"
    result = vsa(["report", str(run), "--features", str(mini_features), "--images", "3", "--figure", str(figure)])
    page = run / "report.html"
    assert result["images"] == 3 and page.is_file()
    text = page.read_text()
    # the figure for docs: the page's examples, each with its caption and its three regions' captions and boxes
    examples = json.loads(figure.with_suffix(".json").read_text())
    assert len(examples) == 3 and all(len(e["regions"]) == 3 for e in examples)
    for e in examples:
        assert f'id="{e["image_id"]}"' in text and html.escape(e["caption"]) in text
        assert all(f"region {r['region']}: {html.escape(r['caption'])}</li>" in text for r in e["regions"])
        assert all(len(r["box"]) == 4 and r["box"][2] > r["box"][0] for r in e["regions"])
    assert Image.open(figure).size[0] == 5 * 224
    assert text.count('<section class="example"') == 3 and "Top-5 sentences" in text
    # every reference sentence (5 per image) is drawn as snippets, each underlined in its region's colour
    assert text.count('<span class="snippet"') >= 15
    assert "http" not in re.sub(r'data:[^"]+', "", text).replace("http-equiv", ""), "the page must be self-contained"
    logged = mlflow.MlflowClient().list_artifacts(result["mlflow_run_id"], "report")
    assert [a.path for a in logged] == ["report/report.html"]
    assert (tmp_path / "artifacts").is_dir()

    attributes, log = open_in_browser(page)
    # 3 examples × (image + 5 retrieved images) + the curves
    assert attributes.get("images") == "19", (attributes, log[-2000:])
    assert attributes.get("images-loaded") == "19" and attributes.get("problems") == "0", (attributes, log[-2000:])
    assert "CONSOLE" not in log, log[-2000:]
    # the metrics on top: this run's row under the paper's, better cells marked; hovering a snippet lights its box
    assert attributes.get("metrics-rows") == "4", attributes
    assert '<td class="better">17.3</td>' in text and '<td class="">11.0</td>' in text and ">43.2</td>" in text
    assert ">3.2</td>" in text  # training minutes beside the scores
    assert attributes.get("hover-lights-box") == "true", attributes
    # a few boxes by default (the three described regions'), all 19 on demand
    assert attributes.get("boxes-shown") == "3" and attributes.get("boxes-all") == "19", attributes
    open_in_browser(page, screenshot=tmp_path / "report.png")
    assert (tmp_path / "report.png").stat().st_size > 10_000

    # --region-beam: region captions decoded at that beam instead of the region captioner's own (2 here)
    import torch

    from vsa_dist.checkpoints import load_generator
    from vsa_dist.models.decoding import generate

    model, state = load_generator(run / "mrnn" / "best.pt")
    split = load_split(mini_features, "test", word_index(state["vocab"]), state["config"]["max_words"])
    row_of = {image_id: i for i, image_id in enumerate(split["image_ids"])}
    rows = torch.stack([torch.from_numpy(split["features"][row_of[e["image_id"]], r["region"]]).float()
                        for e in examples for r in e["regions"]])
    by_beam = {b: generate(model, rows, state["vocab"], b, state["config"]["max_len"]) for b in (state["beam"], 3)}
    assert state["beam"] == 2 and by_beam[2] != by_beam[3]  # else the check below could not tell the beams apart
    assert [r["caption"] for e in examples for r in e["regions"]] == by_beam[2]
    wider = tmp_path / "docs" / "examples-beam3.jpg"
    vsa(["report", str(run), "--features", str(mini_features), "--images", "3", "--figure", str(wider),
         "--region-beam", "3", "--out", str(tmp_path / "report-beam3.html")])
    decoded = json.loads(wider.with_suffix(".json").read_text())
    assert [r["caption"] for e in decoded for r in e["regions"]] == by_beam[3]

    # --beam/--length-penalty and --region-length-penalty: the decodings chosen on dev, drawn instead of the models'
    # own; a captioner whose captions end at different lengths, so that the penalty changes which caption wins
    ending = untrained_generator_checkpoint(mini_features, tmp_path / "ending.pt", end_bias=0.5)
    model, state = load_generator(ending)
    images = torch.from_numpy(split["features"][[row_of[e["image_id"]] for e in examples]]).float()
    decoded_at = {penalty: (generate(model, images, state["vocab"], 3, state["config"]["max_len"], penalty),
                            generate(model, rows, state["vocab"], 3, state["config"]["max_len"], penalty))
                  for penalty in (0.0, 2.0)}
    # else the checks below could not tell the penalties apart
    assert decoded_at[0.0][0] != decoded_at[2.0][0] and decoded_at[0.0][1] != decoded_at[2.0][1], decoded_at
    chosen = tmp_path / "docs" / "examples-chosen.jpg"
    vsa(["report", str(run), "--features", str(mini_features), "--images", "3", "--figure", str(chosen),
         "--captioner", str(ending), "--region-captioner", str(ending), "--beam", "3", "--length-penalty", "2",
         "--region-beam", "3", "--region-length-penalty", "2", "--out", str(tmp_path / "report-chosen.html")])
    decoded = json.loads(chosen.with_suffix(".json").read_text())
    assert [e["caption"] for e in decoded] == decoded_at[2.0][0]
    assert [r["caption"] for e in decoded for r in e["regions"]] == decoded_at[2.0][1]


def test_figure_must_be_a_jpeg_name(tmp_path, capsys):
    from vsa_dist.cli import main as vsa

    with pytest.raises(SystemExit) as exc:
        vsa(["report", str(tmp_path), "--figure", str(tmp_path / "examples.png")])
    assert exc.value.code == 2 and "a JPEG file name (.jpg)" in capsys.readouterr().err


def test_report_scores_the_images_with_an_aligner_that_runs_its_whole_cnn(mini_features, tmp_path, monkeypatch,
                                                                          ray_cluster):
    """An aligner trained with ``--encoder full`` takes the images: the page's retrieval examples are its scores of the
    test images decoded from the folder's shards (every word's region is the whole image: it has no other)."""
    import torch
    from conftest import write_untrained

    from vsa_dist import config as cfglib
    from vsa_dist.cli import main as vsa
    from vsa_dist.eval.retrieval import score_matrix
    from vsa_dist.models.alignment import AlignmentModel
    from vsa_dist.recipes.align import AlignConfig, model_args

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    run = tmp_path / "run"
    manifest = json.loads((mini_features / "manifest.json").read_text())
    cfg = cfglib.resolve(AlignConfig, "train_align_full", {"features": str(mini_features), "embed_dim": 32,
                                                           "word_dim": 16})
    torch.manual_seed(0)
    model = AlignmentModel(model_args(cfg, len(manifest["vocab"]["words"]) + 2, 1280, encoder="efficientnet-lite0",
                                      trunk_block=0))
    pixels = {**manifest, "settings": {**manifest["settings"], "input": "pixels"}}
    write_untrained(run / "align" / "best.pt", model, cfg, pixels)
    untrained_generator_checkpoint(mini_features, run / "mrnn" / "best.pt")
    result = vsa(["report", str(run), "--features", str(mini_features), "--images", "2", "--log-to-mlflow", "false"])
    assert result["images"] == 2
    text = (run / "report.html").read_text()
    split = load_split(mini_features, "test", word_index(manifest["vocab"]["words"]), cfg.max_words)
    images = load_split(mini_features, "test", {}, 1, image_size=224)["features"]
    matrix = score_matrix(model.eval(), torch.from_numpy(images), torch.from_numpy(split["tokens"]).long())
    for section in re.findall(r'<section class="example" id="([^"]+)"', text):
        row = split["image_ids"].index(section)
        best = matrix["scores"][row].argmax().item()
        first = split["references"][matrix["image_of"][best]][matrix["slot"][best]]
        retrieved = text.split(f'id="{section}"', 1)[1].split("Top-5 sentences", 1)[1].split("</ol>", 1)[0]
        assert html.escape(first) in retrieved.split("</li>", 1)[0], (section, first)
