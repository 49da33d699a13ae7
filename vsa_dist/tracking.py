"""MLflow: one place that decides where runs go. Called from stage runners (rank 0 / the driver) only."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
import warnings
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.data.dataset_source_registry import resolve_dataset_source
from mlflow.data.meta_dataset import MetaDataset

from vsa_dist.data.manifests import load_manifest
from vsa_dist.errors import ConfigError
from vsa_dist.io import sha256_json
from vsa_dist.paths import runs_root


def tracking_uri() -> str:
    """``MLFLOW_TRACKING_URI`` if set (a server, a database), else a sqlite file under the runs folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(runs_root() / 'mlflow.db').resolve()}"


PROBE_TIMEOUT_S = 5.0


def check_tracking_store(timeout: float = PROBE_TIMEOUT_S) -> str:
    """Fail in seconds, before Ray starts, when the tracking store cannot be used: a server that does not answer
    (MLflow's own client would retry for minutes), or a sqlite file whose folder cannot be written. Returns the URI."""
    uri = tracking_uri()
    if uri.startswith(("http://", "https://")):
        try:
            urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # it answered: a server is there (a proxy may lack /health)
        except (OSError, ValueError) as err:
            reason = getattr(err, "reason", None) or err
            raise ConfigError(f"MLflow tracking server {uri} does not answer within {timeout:g} s ({reason}); start "
                              "it, or unset MLFLOW_TRACKING_URI to use a local sqlite file") from err
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ConfigError(f"MLflow tracking store {uri}: cannot create {folder} ({err.strerror})") from err
        if not os.access(folder, os.W_OK):
            raise ConfigError(f"MLflow tracking store {uri}: {folder} is not writable")
    return uri


def use_experiment(name: str) -> str:
    """Point MLflow at the tracking store and experiment ``name``; returns the experiment id.

    With the default local store, artifacts go beside it (an absolute path: Ray workers run elsewhere).
    """
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///") and "MLFLOW_ARTIFACT_ROOT" not in os.environ:
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri()
    elif "MLFLOW_ARTIFACT_ROOT" in os.environ:
        location = os.environ["MLFLOW_ARTIFACT_ROOT"]
    return mlflow.create_experiment(name, artifact_location=location)


def end_interrupted_run(error: BaseException) -> None:
    """Close the stage's MLflow run, if one is open, as KILLED (a signal, Ctrl-C) or FAILED (an error).

    Left open, MLflow's exit hook would close it as FINISHED: a stopped run would look like one that ran
    to its end. Does nothing, and imports nothing, in a stage that never used MLflow."""
    mlflow = sys.modules.get("mlflow")
    run = mlflow.active_run() if mlflow is not None else None
    if run is None:
        return
    status = "KILLED" if isinstance(error, (KeyboardInterrupt, SystemExit)) else "FAILED"
    try:
        mlflow.end_run(status=status)
    except Exception as failure:  # an unreachable server must not replace the error that stopped the stage
        print(f"mlflow: could not mark run {run.info.run_id} {status}: {failure}", file=sys.stderr)


def source_tags() -> dict[str, str]:
    """Which code ran: the git commit of the checkout the package was imported from (and whether it had uncommitted
    changes to tracked files), under MLflow's own tag for it; an installed package gives its version only."""
    tags = {"vsa.version": metadata.version("vsa-dist")}
    source = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return tags
    return {**tags, "mlflow.source.git.commit": commit, "vsa.git_dirty": str(bool(dirty)).lower()}


def log_data_inputs(features: str, manifest: dict, context: str = "training") -> None:
    """The run's data as MLflow dataset inputs: the feature folder and the image shards it was made from, each
    named by its folder and identified by its manifest's digest (a rebuilt folder is a new digest)."""
    inputs = [("features", features, manifest)]
    shards = str(manifest.get("source", {}).get("shards", ""))
    if shards:
        try:
            inputs.append(("shards", shards, load_manifest(shards)))
        except FileNotFoundError:  # the shards moved or were deleted since: the features still identify the data
            pass
    for kind, where, content in inputs:
        name = f"{kind}:{str(where).rstrip('/').rsplit('/', 1)[-1]}"
        with warnings.catch_warnings():  # MLflow registers its local-file source twice and says so at each path
            warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
            source = resolve_dataset_source(str(where))
        dataset = MetaDataset(source, name=name, digest=sha256_json(content)[:16])
        mlflow.log_input(dataset, context=context)
