"""The MLflow model registry, read without torch: which version a model URI names, its folder, its files. A command
that loads a model asks here first, so a missing model is one line before the seconds of importing torch."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.artifacts
import yaml
from mlflow import MlflowClient

from vsa_dist.tracking import check_tracking_store

DATASET_TAG = "dataset"  # a model version's tag: the data set it was trained on (``dataset_label``)


@dataclass
class ResolvedModel:
    """Where a model URI led: its local folder and, from the registry, the exact name and version."""

    uri: str
    folder: Path
    name: str = ""
    version: str = ""
    aliases: tuple[str, ...] = ()
    dataset: str = ""

    def label(self) -> str:
        """``vsa-captioner/2 (@champion, flickr8k)``; a model folder or run is named by its URI."""
        if not self.version:
            return self.uri
        details = [*(f"@{alias}" for alias in self.aliases), *([self.dataset] if self.dataset else [])]
        return f"{self.name}/{self.version}" + (f" ({', '.join(details)})" if details else "")


def resolve_model(uri: str) -> ResolvedModel:
    """The model at ``uri`` (a folder, or ``models:/``, ``runs:/`` or any artifact URI) in a local folder. A
    ``models:/NAME@ALIAS`` is resolved to its version first and that version is fetched, so the name printed is the
    model used even if the alias moves meanwhile. Nothing in the folder is executed or unpickled here."""
    if Path(uri).is_dir():
        return ResolvedModel(uri, Path(uri))
    if uri.startswith(("models:/", "runs:/")):
        check_tracking_store()  # a server that is not there: one line in seconds, not MLflow's minutes of retries
    name, _, number = uri.removeprefix("models:/").rpartition("/")
    if not uri.startswith("models:/") or ("@" not in uri and not number.isdigit()):
        # runs:/, an artifact URI, or a models:/ form other than @ALIAS and /VERSION (a stage, "latest"): as MLflow
        # resolves it, unnamed
        return ResolvedModel(uri, Path(mlflow.artifacts.download_artifacts(artifact_uri=uri)))
    if "@" in uri:
        check_alias(uri)
        name, alias = uri.removeprefix("models:/").rsplit("@", 1)
        version = MlflowClient().get_model_version_by_alias(name, alias)
    else:
        try:
            version = MlflowClient().get_model_version(name, number)
        except mlflow.exceptions.MlflowException as err:
            raise mlflow.exceptions.MlflowException(f"{name} has no version {number!r}: vsa models lists the "
                                                    "versions there are") from err
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{version.name}/{version.version}"))
    held = MlflowClient().get_registered_model(version.name).aliases or {}  # a version itself may not list them
    aliases = tuple(sorted(a for a, v in held.items() if str(v) == str(version.version)))
    return ResolvedModel(uri, folder, version.name, str(version.version), aliases,
                         (version.tags or {}).get(DATASET_TAG, ""))


def model_folder(uri: str) -> Path:
    return resolve_model(uri).folder


def check_alias(uri: str) -> None:
    """A ``models:/NAME@ALIAS`` that no version holds is an MlflowException saying what the registry does hold: no such
    model, or its aliases (the smoke test's models are @smoke, never the @champion the commands default to)."""
    name, alias = uri.removeprefix("models:/").rsplit("@", 1)
    client = MlflowClient()
    worth = "a model worth using, from full Flickr8k: bash scripts/demo.sh --preset pipeline_quick"
    try:
        registered = client.get_registered_model(name)
    except mlflow.exceptions.MlflowException as err:
        raise mlflow.exceptions.MlflowException(f"no model named {name} is registered; {worth}") from err
    held = registered.aliases or {}  # alias → version
    if alias in held:
        return
    aliases = ", ".join(f"@{a} is version {v}" for a, v in sorted(held.items())) or "no version has an alias"
    smoke = " (@smoke: the smoke test's, poor by design)" if "smoke" in held else ""
    raise mlflow.exceptions.MlflowException(f"no version of {name} holds @{alias}: {aliases}{smoke}; {worth}, or name "
                                            f"a version: --model models:/{name}/VERSION")


def model_artifacts(folder: Path, required: tuple[str, ...]) -> dict[str, str]:
    """The files a vsa model logged beside itself, read from the folder's ``MLmodel`` (YAML, safe loader); each
    must lie inside the folder. ValueError names the folder and what is wrong."""
    try:
        meta = yaml.safe_load((folder / "MLmodel").read_text())
        listed = meta["flavors"]["python_function"].get("artifacts") or {}
    except yaml.YAMLError as err:  # e.g. a !!python tag, which the safe loader refuses: said in one line
        mark = getattr(err, "problem_mark", None)
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(f"{folder}: MLmodel{f':{mark.line + 1}' if mark else ''}: refused as YAML: {problem}") \
            from err
    except (OSError, KeyError, TypeError, AttributeError) as err:
        raise ValueError(f"{folder}: not an MLflow pyfunc model folder ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''})") from err
    root, artifacts = folder.resolve(), {}
    for key, entry in listed.items():
        path = (root / str((entry or {}).get("path", ""))).resolve()
        if not path.is_relative_to(root) or not path.is_file():
            raise ValueError(f"{folder}: artifact {key!r} is not a file inside the model folder")
        artifacts[key] = str(path)
    if missing := [key for key in required if key not in artifacts]:
        raise ValueError(f"{folder}: not a vsa model (no {', '.join(missing)} artifact)")
    return artifacts
