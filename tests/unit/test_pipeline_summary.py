"""The pipeline's closing lines: one unit per kind of number, rounded, what was registered, where to look."""

from __future__ import annotations


def test_the_summary_is_rounded_in_one_unit_per_kind_and_says_where_to_look(monkeypatch):
    from vsa_dist import config as cfglib
    from vsa_dist.stages.pipeline import PipelineConfig, summary

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////tmp/x/mlflow.db")
    cfg = cfglib.resolve(PipelineConfig, None, {"run_dir": "/tmp/x", "data": "/tmp/data"}, validate=False)
    results = {
        "align": {"test": {"annotation": {"r1": 3.5999999999999996, "r5": 12.0, "r10": 20.4, "medr": 31.0},
                           "search": {"r1": 2.8, "r5": 11.2, "r10": 19.6, "medr": 40.5}},
                  "registered": {"name": "vsa-align", "version": "4", "alias": "champion"}},
        "mrnn": {"test": {"bleu4": 0.0571234, "meteor": 0.0912, "cider": 0.0360001},
                 "registered": {"name": "vsa-captioner", "version": "7", "alias": None}},
        "report": {"out": "/tmp/x/report.html"}}
    text = summary(cfg, results, 205.0)
    assert "pipeline: done in 3.4 min; outputs under /tmp/x" in text
    assert "image→text R@1/5/10 3.6 / 12.0 / 20.4 (med r 31), " \
           "text→image R@1/5/10 2.8 / 11.2 / 19.6 (med r 40.5)" in text
    assert "BLEU-4 5.7, METEOR 9.1, CIDEr 3.6 (x 100)" in text
    assert "registered: models:/vsa-align/4 (now @champion), models:/vsa-captioner/7" in text
    assert "mlflow ui --backend-store-uri sqlite:////tmp/x/mlflow.db" in text and "/tmp/x/report.html" in text
    assert "99999" not in text and "0.0" not in text.split("captions")[1].split("\n")[0]


def test_the_smoke_test_registers_its_models_as_smoke_and_names_that_alias_in_what_to_run_next():
    from vsa_dist import config as cfglib
    from vsa_dist.stages.pipeline import PipelineConfig, next_commands

    smoke = cfglib.resolve(PipelineConfig, None, {"run_dir": "/tmp/x", "data": "/data/flickr8k-mini"}, validate=True)
    full = cfglib.resolve(PipelineConfig, None, {"run_dir": "/tmp/x", "data": "/data/flickr8k"}, validate=True)
    assert (smoke.alias, full.alias) == ("smoke", "champion")
    registered = {"align": {"registered": {"name": "vsa-align"}}, "mrnn": {"registered": {"name": "vsa-captioner"}}}
    assert "--model models:/vsa-captioner@smoke" in next_commands(smoke, registered)
    assert "--model models:/vsa-align@smoke" in next_commands(smoke, registered)
    assert "--model" not in next_commands(full, registered)
