"""``vsa tune``: eight trials of the real alignment loop on the mini features, on the local Ray cluster, ASHA stopping
the weaker; every trial an MLflow child run; the best written as a preset that train-align takes; a rerun resumes."""

from __future__ import annotations

import json

import yaml

from vsa_dist.cli import main as vsa


def test_tune_searches_on_dev_with_asha_and_writes_the_best_as_a_preset(tmp_path, mini_features, ray_cluster,
                                                                          mlflow_server, monkeypatch, capsys):
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    space = tmp_path / "space.yaml"
    space.write_text("lr: {loguniform: [1.0e-5, 3.0e-3]}\nweight_decay: {loguniform: [1.0e-6, 1.0e-2]}\n"
                     "hardest_negative: {choice: [false, true]}\n")
    out = tmp_path / "tune"
    args = ["tune", "--stage", "align", "--features", str(mini_features), "--base", "train_align_modern",
            "--set", "batch_size=20,embed_dim=128", "--space", str(space), "--trials", "8", "--epochs", "3",
            "--workers", "0", "--out", str(out), "--experiment", "test-tune", "--progress", "false"]
    summary = vsa(args)

    rows = summary["trials"]
    assert sorted(row["trial"] for row in rows) == list(range(8))
    record = json.loads((out / "tune.json").read_text())
    for row in rows:  # every trial ran the draw recorded before the search, inside the space
        assert row["params"] == record["draws"][row["trial"]]
        assert 1e-5 <= row["params"]["lr"] <= 3e-3 and 1e-6 <= row["params"]["weight_decay"] <= 1e-2
        assert 1 <= row["epochs"] <= 3 and row["finished"]
    assert len({row["params"]["lr"] for row in rows}) == 8
    # ASHA (grace 1 epoch, halving): not every trial runs to the end, and the rows are ordered by their best dev score
    assert any(row["epochs"] < 3 for row in rows) and any(row["epochs"] == 3 for row in rows), rows
    scores = [row["best_dev_score"] for row in rows]
    assert scores == sorted(scores, reverse=True)

    # Each trial is an MLflow child run of the search's run, closed, its dev scores those the trial table read.
    client = MlflowClient(mlflow_server)
    children = client.search_runs([client.get_run(summary["mlflow_run_id"]).info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{summary['mlflow_run_id']}'")
    assert len(children) == 8 and all(run.info.status == "FINISHED" for run in children)
    best = rows[0]
    history = client.get_metric_history(best["run_id"], "dev_rsum")
    assert len(history) == best["epochs"] and max(m.value for m in history) == best["best_dev_score"]
    assert float(client.get_run(best["run_id"]).data.params["lr"]) == best["params"]["lr"]

    # The best trial's settings as a preset file: the base's keys, --set, the tuned ones; train-align reads it.
    preset = yaml.safe_load((out / "best.yaml").read_text())
    assert preset["optimizer"] == "adam" and preset["batch_size"] == 20 and preset["lr"] == best["params"]["lr"]
    capsys.readouterr()
    try:
        vsa(["train-align", "--preset", str(out / "best.yaml"), "--print-config"])
    except SystemExit:
        pass
    resolved = yaml.safe_load(capsys.readouterr().out)
    assert resolved["lr"] == best["params"]["lr"] and resolved["weight_decay"] == best["params"]["weight_decay"]
    assert resolved["hardest_negative"] == best["params"]["hardest_negative"] and resolved["embed_dim"] == 128

    # A rerun with --resume keeps the finished trials: nothing to run, the same best.
    again = vsa([*args, "--resume", "true"])
    assert again["best"]["params"] == best["params"] and again["mlflow_run_id"] == summary["mlflow_run_id"]
    assert "0 of 8 trials" in capsys.readouterr().out


def test_a_trial_streams_what_the_stage_would(tmp_path, mini_features, ray_cluster, mlflow_server, monkeypatch):
    """A model that scores the whole image alone: its row alone, and the --augment folder's images joining (here the
    same folder again, which the checks accept: same images, vocabulary and CNN), as train-align would stream them."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    summary = vsa(["tune", "--stage", "align", "--features", str(mini_features), "--set",
                   f"batch_size=20,embed_dim=64,regions=false,augment={mini_features}", "--trials", "1",
                   "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "tune"), "--experiment", "test-tune",
                   "--progress", "false"])
    assert summary["stream"]["whole_image_only"] and list(summary["stream"]["augment"]) == [str(mini_features)]
    record = json.loads((tmp_path / "tune" / "trials" / "000.json").read_text())
    assert record["epochs"][0]["steps"] == 2 * 100 // 20  # 100 train images, twice over, 20 a step
