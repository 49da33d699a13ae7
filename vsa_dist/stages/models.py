"""``vsa models``: what the MLflow registry holds, and which version each alias points at.

    vsa models                                   # every registered model's versions, newest first
    vsa models vsa-captioner --format jsonl      # one model, an object per version
    vsa models promote vsa-captioner 2           # vsa-captioner@champion is now version 2
    vsa models promote vsa-align 3 --alias smoke

A version's row: its aliases, the data set it was trained on, its dev score (what the alias moves by), its test
scores and its training minutes (from its MLflow run), when it was registered.
"""

from __future__ import annotations

import json
import time
from typing import Any

import mlflow
from mlflow import MlflowClient

from vsa_dist import config as cfglib
from vsa_dist.configs import ModelsConfig, PromoteConfig
from vsa_dist.registry import DATASET_TAG
from vsa_dist.stages import run_stage
from vsa_dist.tracking import check_tracking_store, tracking_uri

# the test scores a row shows, by what the model's run logged (the generator's captions, the aligner's retrieval)
TEST_SCORES = {"test_cider": ("CIDEr", 100), "test_bleu4": ("BLEU-4", 100),
               "test_annotation_r1": ("R@1 image→text", 1), "test_search_r1": ("R@1 text→image", 1)}
DEV_SCORES = {"dev_cider": ("dev CIDEr", 100), "dev_rsum": ("dev R-sum", 1)}


def _client() -> MlflowClient:
    check_tracking_store()  # a server that is not there: one line in seconds
    mlflow.set_tracking_uri(tracking_uri())
    return MlflowClient()


def _registered(client: MlflowClient, name: str):
    try:
        return client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as err:
        known = ", ".join(sorted(m.name for m in client.search_registered_models())) or "none"
        raise cfglib.ConfigError(f"no model named {name!r} is registered in {tracking_uri()} (registered: {known})") \
            from err


def aliases_of(registered) -> dict[str, list[str]]:
    """Version → its aliases, from the registered model (a version listing does not always carry them)."""
    found: dict[str, list[str]] = {}
    for alias, version in sorted((registered.aliases or {}).items()):
        found.setdefault(str(version), []).append(alias)
    return found


def version_row(client: MlflowClient, version, aliases: list[str]) -> dict[str, Any]:
    """One version as ``vsa models`` shows it; scores from its tags and its run's metrics (last values)."""
    tags = version.tags or {}
    try:
        metrics = client.get_run(version.run_id).data.metrics if version.run_id else {}
    except mlflow.exceptions.MlflowException:  # the run was deleted: the version still is what it is
        metrics = {}
    dev = {label: round(float(tags[key]) * scale, 1) for key, (label, scale) in DEV_SCORES.items() if key in tags}
    test = {label: round(metrics[key] * scale, 1) for key, (label, scale) in TEST_SCORES.items() if key in metrics}
    return {"name": version.name, "version": int(version.version), "aliases": aliases,
            "dataset": tags.get(DATASET_TAG, ""), "dev": dev, "test": test,
            "train_minutes": round(metrics["minutes"], 1) if "minutes" in metrics else None,
            "registered": time.strftime("%Y-%m-%d %H:%M", time.localtime(version.creation_timestamp / 1000)),
            "run_id": version.run_id}


def list_models(cfg: ModelsConfig) -> list[dict[str, Any]]:
    client = _client()
    names = cfg.names or sorted(m.name for m in client.search_registered_models())
    rows = []
    for name in names:
        aliases = aliases_of(_registered(client, name))
        versions = client.search_model_versions(f"name = '{name}'")
        rows += [version_row(client, v, aliases.get(str(v.version), []))
                 for v in sorted(versions, key=lambda v: -int(v.version))]
    if cfg.format == "jsonl":
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), flush=True)
    elif not rows:
        print(f"no registered model in {tracking_uri()}: the training commands register theirs (--register-as)")
    else:
        print(table(rows))
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """The rows as aligned text columns, for people."""
    def scores(values: dict[str, float]) -> str:
        return ", ".join(f"{label} {value:g}" for label, value in values.items()) or "-"

    cells = [("model", "aliases", "data", "dev", "test", "train min", "registered")] + [
        (f"{r['name']}/{r['version']}", " ".join(f"@{a}" for a in r["aliases"]) or "-", r["dataset"] or "?",
         scores(r["dev"]), scores(r["test"]), "-" if r["train_minutes"] is None else f"{r['train_minutes']:g}",
         r["registered"]) for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in cells)


def promote(cfg: PromoteConfig) -> dict[str, Any]:
    client = _client()
    name, number = cfg.target
    registered = _registered(client, name)
    try:
        version = client.get_model_version(name, number)
    except mlflow.exceptions.MlflowException as err:
        versions = sorted(int(v.version) for v in client.search_model_versions(f"name = '{name}'"))
        raise cfglib.ConfigError(f"{name} has no version {number} (versions: {', '.join(map(str, versions))})") \
            from err
    before = (registered.aliases or {}).get(cfg.alias)
    client.set_registered_model_alias(name, cfg.alias, version.version)
    row = version_row(client, version, aliases_of(client.get_registered_model(name)).get(str(version.version), []))
    was = f" (was version {before})" if before and str(before) != str(number) else ""
    print(f"vsa models: {name}@{cfg.alias} is now version {number}{was}: models:/{name}@{cfg.alias} loads "
          f"{name}/{number} ({row['dataset'] or 'data set not recorded'})", flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    return run_stage(ModelsConfig, list_models, argv, prog="vsa models list", preset=None)


def promote_main(argv: list[str] | None = None) -> dict[str, Any]:
    return run_stage(PromoteConfig, promote, argv, prog="vsa models promote", preset=None)
