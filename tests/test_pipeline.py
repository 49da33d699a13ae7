"""The README's first command, `vsa pipeline`, end to end on flickr8k-mini with its default local stores."""

from __future__ import annotations

import json

import mlflow


def test_pipeline_runs_every_stage_on_the_mini_set(tmp_path, mini_dir, ray_cluster, monkeypatch):
    from vsa_dist.cli import main as vsa

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("VSA_RUNS_ROOT", str(tmp_path / "runs"))
    results = vsa(["pipeline", "--data", str(mini_dir), "--align-epochs", "2", "--mrnn-epochs", "2",
                   "--progress", "false"])
    run_dir = tmp_path / "runs" / "mini"
    assert results["shards"]["counts"]["images"]["written"] == 200
    assert results["features"]["counts"]["images"]["written"] == 200
    summary = json.loads((run_dir / "align" / "summary.json").read_text())
    assert summary["run_id"] == results["align"]["run_id"] and summary["best_dev_epoch"] in (1, 2)
    assert set(summary["test"]) == {"annotation", "search"}

    # The default tracking store is a sqlite file under the runs folder, with the run and the model in it.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    run = mlflow.get_run(summary["run_id"])
    assert run.data.params["score_norm"] == "mean" and "test_search_r5" in run.data.metrics
    assert mlflow.MlflowClient().get_registered_model("vsa-align").name == "vsa-align"

    # The generator: trained, tested with every caption metric, registered, and the champion.
    captions = json.loads((run_dir / "mrnn" / "summary.json").read_text())
    assert set(captions["test"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}
    champion = mlflow.MlflowClient().get_model_version_by_alias("vsa-captioner", "champion")
    assert champion.run_id == captions["run_id"] == results["mrnn"]["run_id"]
