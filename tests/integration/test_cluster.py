"""Cluster use with real processes: storage URIs, resources a cluster can never provide, `ray job submit`
against a `ray start --head` cluster with a shared MLflow server, Ray's fake-multinode autoscaler, and
a worker node lost in the middle of training and of feature extraction."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import mlflow
import psutil
import pytest
from conftest import REPO, free_port

RAY = str(Path(sys.executable).parent / "ray")


# ----------------------------------------------------------------------------------- a second Ray cluster
@contextlib.contextmanager
def ray_head(num_cpus: int, env: dict[str, str] | None = None, autoscaling_config: Path | None = None,
             port: int | None = None):
    """``ray start --head`` in its own temp dir, beside the session's Ray; yields its addresses.

    Stopped by killing the processes of that temp dir and their children: ``ray stop`` would stop every
    Ray on the machine, the session's too. A short temp dir: Ray's socket paths must stay under 107 bytes.
    """
    temp_dir = tempfile.mkdtemp(prefix="vsa-ray-", dir="/tmp")
    port, dashboard = port or free_port(), free_port()
    # Every port of its own: the defaults (e.g. the dashboard agent's 52365) may be taken by another Ray here.
    command = [RAY, "start", "--head", "--port", str(port), "--dashboard-host", "127.0.0.1", "--dashboard-port",
               str(dashboard), "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port",
               str(free_port()), "--metrics-export-port", str(free_port()), "--num-cpus", str(num_cpus),
               "--temp-dir", temp_dir, "--disable-usage-stats"]
    if autoscaling_config is not None:
        command += ["--autoscaling-config", str(autoscaling_config)]
    full_env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **(env or {})}
    subprocess.run(command, env=full_env, check=True, capture_output=True, timeout=180)
    try:
        yield {"gcs": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": full_env}
    finally:
        roots = [p for p in psutil.process_iter(["cmdline"])
                 if p.pid != os.getpid() and any(temp_dir in a for a in (p.info["cmdline"] or []))]
        doomed = set(roots)
        for proc in roots:
            with contextlib.suppress(psutil.Error):
                doomed.update(proc.children(recursive=True))
        for proc in doomed:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        psutil.wait_procs(list(doomed), timeout=30)


def submit(head: dict, args: list[str], submission_id: str) -> None:
    """``ray job submit`` as a user types it (from the checkout, with the repo's runtime env); no waiting.

    Retried for a minute: a head that has just started may not have its job agent up yet."""
    deadline = time.time() + 60
    while True:
        proc = subprocess.run([RAY, "job", "submit", "--address", head["dashboard"], "--submission-id", submission_id,
                               "--working-dir", str(REPO), "--runtime-env", str(REPO / "cluster" / "runtime_env.yaml"),
                               "--no-wait", "--", "python", *args],
                              env=head["env"], capture_output=True, text=True, timeout=300)
        if proc.returncode == 0 or "No available agent" not in proc.stderr or time.time() > deadline:
            break
        time.sleep(2)
    assert proc.returncode == 0, f"ray job submit failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def wait_for_job(head: dict, submission_id: str, timeout: float, on_poll=None) -> str:
    from ray.job_submission import JobStatus, JobSubmissionClient

    client = JobSubmissionClient(head["dashboard"])
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get_job_status(submission_id)
        if on_poll is not None:
            on_poll()
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            assert status == JobStatus.SUCCEEDED, client.get_job_logs(submission_id)[-5000:]
            return client.get_job_logs(submission_id)
        time.sleep(1)
    client.stop_job(submission_id)
    raise AssertionError(f"job {submission_id} not done in {timeout}s:\n{client.get_job_logs(submission_id)[-5000:]}")


def alive_nodes(head: dict) -> int:
    from ray.util.state import list_nodes

    return sum(1 for n in list_nodes(address=head["dashboard"], limit=100) if n.state == "ALIVE")


# ----------------------------------------------------------------------------------- storage URIs
def test_every_stage_reads_and_writes_storage_uris(tmp_path, mini_dir, ray_cluster, monkeypatch):
    """``file://`` goes through the same pyarrow code as ``s3://`` / ``gs://``: mirror, publish, fetch."""
    from vsa_dist.cli import main as vsa

    monkeypatch.setenv("VSA_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("VSA_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bucket = (tmp_path / "bucket").as_uri()
    vsa(["shards", "build", "--root", str(mini_dir), "--out", f"{bucket}/shards", "--samples-per-shard", "40",
         "--progress", "false"])
    features = vsa(["features", "--shards", f"{bucket}/shards", "--out", f"{bucket}/features", "--progress", "false"])
    assert features["counts"]["images"]["written"] == 200
    assert features["source"]["shards"] == f"{bucket}/shards"
    stored = tmp_path / "bucket" / "features"
    assert (stored / "manifest.json").is_file() and len(list(stored.glob("*.tar"))) == 7

    # A rerun reads the published shards back and redoes nothing.
    again = vsa(["features", "--shards", f"{bucket}/shards", "--out", f"{bucket}/features", "--progress", "false"])
    assert again["build"]["shards_built"] == 0 and again["build"]["shards_reused"] == 7

    summary = vsa(["train-align", "--features", f"{bucket}/features", "--out", f"{bucket}/align", "--epochs", "1",
                   "--batch-size", "20", "--workers", "1", "--progress", "false"])
    assert summary["checkpoint"] == f"{bucket}/align/best.pt"
    assert (tmp_path / "bucket" / "align" / "best.pt").is_file()
    assert (tmp_path / "bucket" / "align" / "summary.json").is_file()
    assert list((tmp_path / "bucket" / "align" / "ray").glob("*/checkpoint_*")), "Ray Train wrote its checkpoints there"
    metrics = vsa(["eval", "retrieval", "--checkpoint", f"{bucket}/align/best.pt", "--features", f"{bucket}/features",
                   "--out", f"{bucket}/eval/test.json"])
    assert json.loads((tmp_path / "bucket" / "eval" / "test.json").read_text()) == json.loads(json.dumps(metrics))
    assert metrics["annotation"] == summary["test"]["annotation"]

    # With no MLFLOW_TRACKING_URI, runs and models go to a sqlite file under the runs folder.
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    assert "test_search_r5" in mlflow.get_run(summary["run_id"]).data.metrics
    assert mlflow.MlflowClient().get_registered_model("vsa-align").name == "vsa-align"


def test_a_request_the_cluster_can_never_place_fails_before_any_work(mini_features, tmp_path, ray_cluster, capsys,
                                                                     monkeypatch):
    from vsa_dist.cli import main as vsa

    monkeypatch.delenv("VSA_AUTOSCALER_CONFIG", raising=False)
    for argv, says in (
        (["train-align", "--features", str(mini_features), "--out", str(tmp_path / "a"), "--use-gpu", "true"],
         "'GPU': 1.0"),
        (["train-align", "--features", str(mini_features), "--out", str(tmp_path / "b"), "--workers", "4",
          "--batch-size", "100"], "can place only 2"),
        (["features", "--shards", str(mini_features.parent / "shards"), "--out", str(tmp_path / "f"), "--device",
          "cuda"], "no autoscaler found"),
    ):
        started = time.time()
        with pytest.raises(SystemExit) as exit_info:
            vsa(argv)
        assert exit_info.value.code == 2 and time.time() - started < 60
        assert says in capsys.readouterr().err
    assert not (tmp_path / "a" / "run.json").exists() and not (tmp_path / "f" / "manifest.json").exists()

    # With an autoscaler that can add a GPU node, the same GPU request is placeable (it is not run here).
    from vsa_dist.ray_env import check_placeable

    config = tmp_path / "autoscaler.yaml"
    config.write_text("available_node_types:\n  gpu: {resources: {CPU: 8, GPU: 1}, max_workers: 2}\n")
    monkeypatch.setenv("VSA_AUTOSCALER_CONFIG", str(config))
    check_placeable({"CPU": 1.0, "GPU": 1.0}, 4, "train")
    with pytest.raises(ValueError, match="no node type its autoscaler"):
        check_placeable({"CPU": 1.0, "GPU": 2.0}, 1, "train")


# ----------------------------------------------------------------------------------- cluster configs
@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml", "fake_multinode.yaml"])
def test_cluster_launcher_configs_pass_rays_own_validation(name, monkeypatch):
    import yaml
    from ray.autoscaler._private.util import prepare_config, validate_config

    from vsa_dist.ray_env import autoscaler_node_types

    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    validate_config(config if name.startswith("fake") else prepare_config(config))
    monkeypatch.setenv("VSA_AUTOSCALER_CONFIG", str(REPO / "cluster" / name))
    node_types = autoscaler_node_types()
    assert node_types[config["head_node_type"]] is not None
    if not name.startswith("fake"):  # a CPU pool for features, a GPU pool for training, both autoscaling
        assert node_types["cpu_worker"]["CPU"] >= 8 and node_types["gpu_worker"]["GPU"] == 1
        for pool in ("cpu_worker", "gpu_worker"):
            spec = config["available_node_types"][pool]
            assert spec["min_workers"] == 0 < spec["max_workers"]
        assert any("pip install" in c and "vsa-dist" in c for c in config["setup_commands"])


def test_kuberay_rayjob_runs_a_job_script_on_the_node_types_vsa_checks_against(monkeypatch):
    import yaml

    from vsa_dist.ray_env import autoscaler_node_types

    job = yaml.safe_load((REPO / "cluster" / "kuberay-rayjob.yaml").read_text())
    assert job["kind"] == "RayJob" and job["apiVersion"] == "ray.io/v1"
    script = job["spec"]["entrypoint"].split()[1]
    assert (REPO / script).is_file() and script.startswith("jobs/")
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    monkeypatch.setenv("VSA_AUTOSCALER_CONFIG", str(REPO / env["VSA_AUTOSCALER_CONFIG"].split("vsa-dist/", 1)[1]))
    node_types = autoscaler_node_types()
    for group in job["spec"]["rayClusterSpec"]["workerGroupSpecs"]:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert node_types[group["groupName"]]["CPU"] == float(limits["cpu"])
        assert node_types[group["groupName"]].get("GPU", 0.0) == float(limits.get("nvidia.com/gpu", 0))
        assert group["minReplicas"] == 0 < group["maxReplicas"]
    runtime_env = yaml.safe_load((REPO / "cluster" / "runtime_env.yaml").read_text())
    assert {"runs/", ".venv/", ".git/"} <= set(runtime_env["excludes"])


# ----------------------------------------------------------------------------------- ray job submit
def other_flickr_subset(out: Path, mini_dir: Path, per_split: int = 40) -> Path:
    """A small Flickr8k-format set of other photos than the mini set's: the first ``per_split`` images of each
    official split list not in the mini set, with all their captions."""
    full = mini_dir.parent / "flickr8k"
    mini = {line.split("#", 1)[0] for line in (mini_dir / "Flickr8k.token.txt").read_text().splitlines()}
    (out / "images").mkdir(parents=True)
    chosen = set()
    for split in ("train", "dev", "test"):
        names = [n for n in (full / f"Flickr_8k.{split}Images.txt").read_text().split() if n not in mini][:per_split]
        (out / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
        chosen.update(names)
    for name in chosen:
        shutil.copy(full / "images" / name, out / "images" / name)
    lines = [line for line in (full / "Flickr8k.token.txt").read_text().splitlines()
             if line.split("#", 1)[0] in chosen]
    (out / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    return out


@pytest.mark.slow
def test_ray_job_submit_runs_the_pipeline_into_a_shared_mlflow_server(tmp_path, mini_dir, mlflow_server, monkeypatch,
                                                                        capsys):
    """The README's pipeline as a Ray job on a `ray start --head` cluster; runs and models land in MLflow. The smoke
    test's models then never answer for the commands' defaults: after a second pipeline on other data, `vsa caption`
    with no --model uses the second's captioner and says which version it is."""
    run_dir, other_dir = tmp_path / "run", tmp_path / "other-run"
    other = other_flickr_subset(tmp_path / "flickr8k-other", mini_dir)
    with ray_head(num_cpus=2, env={"MLFLOW_TRACKING_URI": mlflow_server}) as head:
        submit(head, ["jobs/pipeline.py", "--data", str(mini_dir), "--run-dir", str(run_dir), "--align-epochs", "2",
                      "--mrnn-epochs", "2", "--progress", "false"], "vsa-pipeline-test")
        logs = wait_for_job(head, "vsa-pipeline-test", timeout=900)
        # the smoke test's models take @smoke, never the @champion every command's --model defaults to
        with pytest.raises(mlflow.exceptions.MlflowException):
            mlflow.MlflowClient(mlflow_server).get_model_version_by_alias("vsa-captioner", "champion")
        submit(head, ["jobs/pipeline.py", "--data", str(other), "--run-dir", str(other_dir), "--align-epochs", "1",
                      "--mrnn-epochs", "1", "--progress", "false"], "vsa-pipeline-other")
        other_logs = wait_for_job(head, "vsa-pipeline-other", timeout=900)
    assert "pipeline: done" in logs
    assert (run_dir / "report.html").is_file() and "report.html" in logs

    align = json.loads((run_dir / "align" / "summary.json").read_text())
    captions = json.loads((run_dir / "mrnn" / "summary.json").read_text())
    assert set(align["test"]) == {"annotation", "search"}
    assert set(captions["test"]) == {"bleu1", "bleu2", "bleu3", "bleu4", "bleu_length_ratio", "meteor", "rouge_l",
                                     "cider", "distinct_captions", "distinct_words"}
    assert 1 <= captions["test"]["distinct_captions"] <= 50  # of the mini set's 50 test images
    assert 1 <= captions["test"]["distinct_words"] <= 20 * captions["test"]["distinct_captions"]
    # the pipeline's own record: the whole command's minutes beside both models' test scores
    record = json.loads((run_dir / "summary.json").read_text())
    assert record["kind"] == "pipeline" and record["minutes"] >= sum(record["stage_minutes"].values()) - 0.05
    assert record["align"]["test"] == align["test"] and record["mrnn"]["test"] == captions["test"]
    mlflow.set_tracking_uri(mlflow_server)
    client = mlflow.MlflowClient()
    run = client.get_run(align["run_id"])
    assert run.info.status == "FINISHED" and "test_search_r5" in run.data.metrics
    assert client.get_run(captions["run_id"]).data.metrics["test_cider"] == pytest.approx(captions["test"]["cider"])
    assert client.get_model_version_by_alias("vsa-captioner", "smoke").run_id == captions["run_id"]
    assert "--model models:/vsa-captioner@smoke" in logs
    assert any(v.run_id == align["run_id"] for v in client.search_model_versions("name='vsa-align'"))

    # the second pipeline, on other photos, takes @champion: every default now resolves to its models
    second = json.loads((other_dir / "mrnn" / "summary.json").read_text())
    version = client.get_model_version_by_alias("vsa-captioner", "champion")
    assert version.run_id == second["run_id"] and "pipeline: done" in other_logs
    assert client.get_model_version_by_alias("vsa-captioner", "smoke").run_id == captions["run_id"]
    from vsa_dist.cli import main as vsa

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    photo = next((other / "images").iterdir())
    capsys.readouterr()
    (said,) = vsa(["caption", str(photo)])
    err = capsys.readouterr().err
    assert said[0] == str(photo) and said[1]
    assert f"vsa caption: model vsa-captioner/{version.version} (@champion, flickr8k-other)" in err, err
    rows = vsa(["models", "vsa-captioner", "--format", "jsonl"])
    listed = {row["version"]: row for row in rows}
    assert listed[int(version.version)]["aliases"] == ["champion"]
    assert listed[int(version.version)]["dataset"] == "flickr8k-other" and listed[int(version.version)]["test"]
    smoke = client.get_model_version_by_alias("vsa-captioner", "smoke").version
    assert listed[int(smoke)]["aliases"] == ["smoke"] and listed[int(smoke)]["dataset"] == "flickr8k-mini"


# ----------------------------------------------------------------------------------- autoscaling
@pytest.mark.slow
def test_fake_multinode_autoscaler_adds_a_node_for_a_stage_and_removes_it_when_idle(tmp_path, mini_shards):
    import yaml
    from ray._private.services import get_node_ip_address

    # The repo's config, with the head's GCS port (the provider assumes Ray's default, 6379).
    port = free_port()
    config = yaml.safe_load((REPO / "cluster" / "fake_multinode.yaml").read_text())
    config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{port}"
    config_path = tmp_path / "fake_multinode.yaml"
    config_path.write_text(yaml.safe_dump(config))
    env = {"RAY_FAKE_CLUSTER": "1", "AUTOSCALER_UPDATE_INTERVAL_S": "1", "VSA_AUTOSCALER_CONFIG": str(config_path)}
    seen = []
    with ray_head(num_cpus=1, env=env, autoscaling_config=config_path, port=port) as head:
        assert alive_nodes(head) == 1
        # Two CNN actors of one CPU each: more than the 1-CPU head has.
        submit(head, ["jobs/extract_features.py", "--shards", str(mini_shards), "--out", str(tmp_path / "features"),
                      "--actors", "2", "--threads", "1", "--splits", "test", "--progress", "false"], "vsa-scale-test")
        wait_for_job(head, "vsa-scale-test", timeout=400, on_poll=lambda: seen.append(alive_nodes(head)))
        assert max(seen) >= 2, f"no worker node was added (alive nodes seen: {seen})"
        deadline = time.time() + 120
        while alive_nodes(head) > 1 and time.time() < deadline:
            time.sleep(1)
        assert alive_nodes(head) == 1, "the idle worker node was not removed"
    manifest = json.loads((tmp_path / "features" / "manifest.json").read_text())
    assert manifest["counts"]["images"]["written"] == 50 and manifest["build"]["actors"] == 2


# ----------------------------------------------------------------------------------- node loss
def lose_a_node(stage: str, tmp_path: Path, args: list[str], env: dict[str, str]) -> dict:
    result = tmp_path / "node_loss.json"
    proc = subprocess.run([sys.executable, str(REPO / "tests" / "node_loss.py"), stage, str(result), "--", *args],
                          cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0 and result.is_file(), proc.stdout[-4000:] + proc.stderr[-4000:]
    outcome = json.loads(result.read_text())
    assert outcome["finished"] and "error" not in outcome, outcome
    assert outcome["killed_while_running"], "the stage had finished before the node was removed"
    return outcome


@pytest.mark.slow
def test_training_survives_losing_a_worker_node(tmp_path, mini_features, mlflow_server):
    epochs = 4
    out = tmp_path / "align"
    outcome = lose_a_node("align", tmp_path, [
        "--features", str(mini_features), "--out", str(out), "--epochs", str(epochs), "--batch-size", "20",
        "--workers", "2", "--max-failures", "3", "--test", "false", "--progress", "false"],
        env={"MLFLOW_TRACKING_URI": mlflow_server})
    summary = outcome["result"]
    assert summary["last_epoch"]["epoch"] == epochs

    # Every epoch's dev metric is in MLflow; the epochs before the loss were not run again from scratch.
    history = mlflow.MlflowClient(mlflow_server).get_metric_history(summary["run_id"], "dev_rsum")
    assert {m.step for m in history} == set(range(1, epochs + 1))
    before = [m.step for m in history if m.timestamp < outcome["killed_at_ms"]]
    after = [m.step for m in history if m.timestamp >= outcome["killed_at_ms"]]
    assert before and after and min(after) > 1, (before, after)
    assert [m.step for m in history].count(1) == 1


@pytest.mark.slow
def test_feature_extraction_survives_losing_a_worker_node(tmp_path, mini_shards):
    from vsa_dist.data.shards import read_samples, shard_paths

    out = tmp_path / "features"
    lose_a_node("features", tmp_path, ["--shards", str(mini_shards), "--out", str(out), "--regions", "crop",
                                       "--splits", "test", "--actors", "2", "--progress", "false"], env={})
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["images"] == {"input": 50, "written": 50, "rejected": 0}
    keys = [s["__key__"] for s in read_samples(shard_paths(out))]
    expected = [s["__key__"] for s in read_samples(shard_paths(mini_shards, ["test"]))]
    assert sorted(keys) == sorted(expected) and len(set(keys)) == len(keys)
