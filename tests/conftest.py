"""Shared fixtures: the real mini data set, a real local Ray cluster, a real MLflow server, and makers of broken
inputs. tests/unit uses none of the data, Ray or MLflow ones; tests/integration does."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DATA_ROOT = Path(os.environ.get("VSA_DATA_ROOT", REPO.parent / "shared" / "data"))
MINI = DATA_ROOT / "flickr8k-mini"


def pytest_configure(config):
    # Ray's own progress output drowns pytest's; tests that care read results, not bars.
    os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")


@pytest.fixture(scope="session")
def mini_dir() -> Path:
    """The flickr8k-mini data set (tests/integration only: tests/unit needs no data)."""
    if not (MINI / "Flickr8k.token.txt").is_file():
        pytest.fail(f"{MINI}: the flickr8k-mini data set is missing (set VSA_DATA_ROOT)", pytrace=False)
    return MINI


@pytest.fixture(scope="session")
def mini_images(mini_dir) -> list[Path]:
    return sorted((mini_dir / "images").glob("*.jpg"))


@pytest.fixture(scope="session")
def ray_cluster():
    """One real local Ray instance for the whole session (starting one costs ~5 s)."""
    import ray

    if not ray.is_initialized():
        # address="local": a new Ray for this session, even when another one runs on the machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def mini_shards(tmp_path_factory, mini_dir) -> Path:
    """flickr8k-mini as image shards of 40 (train 3, dev 2, test 2), built once per session."""
    from vsa_dist.cli import main as vsa

    out = tmp_path_factory.mktemp("mini") / "shards"
    vsa(["shards", "build", "--root", str(mini_dir), "--out", str(out), "--samples-per-shard", "40",
         "--progress", "false"])
    return out


@pytest.fixture(scope="session")
def mini_features(mini_shards, ray_cluster) -> Path:
    """roi/grid features of all of flickr8k-mini, extracted once per session on the local Ray cluster."""
    from vsa_dist.cli import main as vsa

    out = mini_shards.parent / "features"
    vsa(["features", "--shards", str(mini_shards), "--out", str(out), "--progress", "false"])
    return out


@pytest.fixture(scope="session")
def mini_trunk(mini_shards, ray_cluster) -> Path:
    """Each flickr8k-mini image's activation entering lite0's block 12 (vsa features --trunk-block 12), once."""
    from vsa_dist.cli import main as vsa

    out = mini_shards.parent / "trunk12"
    vsa(["features", "--shards", str(mini_shards), "--out", str(out), "--trunk-block", "12", "--progress", "false"])
    return out


def untrained_alignment_checkpoint(features_dir, path, preset=None, **settings):
    """A real best.pt in the format train-align writes, with untrained weights (the DP does not care): the paper's
    model, or ``preset``'s, with ``settings`` over it."""
    import json as jsonlib

    import torch

    from vsa_dist import config as cfglib
    from vsa_dist.models.alignment import AlignmentModel
    from vsa_dist.recipes.align import AlignConfig, model_args

    manifest = jsonlib.loads((features_dir / "manifest.json").read_text())
    vocab = manifest["vocab"]["words"]
    cfg = cfglib.resolve(AlignConfig, preset, {"features": str(features_dir), "embed_dim": 32, "word_dim": 16,
                                               **settings})
    torch.manual_seed(0)
    model = AlignmentModel(model_args(cfg, len(vocab) + 2, manifest["settings"]["feature_dim"]))
    return write_untrained(path, model, cfg, manifest)


def untrained_generator_checkpoint(features_dir, path, cell="rnn", end_bias=0.0):
    """A real best.pt in the format train-mrnn writes, with untrained weights. ``end_bias`` raises END's logit, so that
    captions end at different lengths (an untrained model's otherwise all run to max_len)."""
    import dataclasses
    import json as jsonlib

    import torch

    from vsa_dist.models.mrnn import MRNN
    from vsa_dist.recipes.mrnn import MRNNConfig, model_args

    manifest = jsonlib.loads((features_dir / "manifest.json").read_text())
    vocab = manifest["vocab"]["words"]
    cfg = dataclasses.replace(MRNNConfig(), hidden=32, word_dim=16, cell=cell)
    torch.manual_seed(0)
    model = MRNN(model_args(cfg, len(vocab), manifest["settings"]["feature_dim"]))
    with torch.no_grad():
        model.output.bias[-1] += end_bias  # END is the last id
    return write_untrained(path, model, cfg, manifest, beam=2)


def write_untrained(path, model, cfg, manifest, **extra):
    """``model`` as the best.pt its training stage would write (untrained weights), in that stage's format."""
    import dataclasses

    from vsa_dist.config import to_dict
    from vsa_dist.training.state import write_best

    write_best(path, model, {"config": to_dict(cfg), "model_args": dataclasses.asdict(model.args),
                             "vocab": manifest["vocab"]["words"], "feature_dim": manifest["settings"]["feature_dim"],
                             "feature_settings": manifest["settings"], "epoch": 1,
                             "best": {"score": 0.0, "epoch": 1, "state": None}}, **extra)
    return path


def fails(capsys, *argv: str) -> str:
    """Run ``vsa ARGV``; it must exit 2 with one line on stderr, no traceback. Returns that line."""
    from vsa_dist.cli import main as vsa

    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        vsa(list(argv))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    line = err.splitlines()[-1]  # progress bars may stand before it
    assert "Traceback" not in err and line.startswith("vsa ") and ": error: " in line, err
    return line


@pytest.fixture(scope="session")
def mini_snippets(mini_features) -> Path:
    """Snippets of the mini train split, aligned by an untrained alignment model (real shards, arbitrary regions)."""
    from vsa_dist.cli import main as vsa

    checkpoint = untrained_alignment_checkpoint(mini_features, mini_features.parent / "align-untrained.pt")
    out = mini_features.parent / "snippets"
    vsa(["align-snippets", "--checkpoint", str(checkpoint), "--features", str(mini_features), "--out", str(out),
         "--beta", "0.5", "--progress", "false"])
    return out


# ----------------------------------------------------------------------------------- a real MLflow server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """``mlflow server`` on localhost with a sqlite store and a local artifact folder."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
         "--workers", "1"], stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError(f"mlflow server did not start: {(root / 'server.log').read_text()[-2000:]}")
    yield url
    proc.terminate()
    proc.wait(timeout=30)



# ----------------------------------------------------------------------------------- broken inputs
def truncated_jpeg(src: Path, dst: Path, keep: float = 0.4) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: int(len(data) * keep)])
    return dst


def jpeg_claiming_size(src: Path, dst: Path, width: int, height: int) -> Path:
    """A real JPEG whose frame header claims width×height: a decompression bomb as PIL sees it."""
    data = bytearray(src.read_bytes())
    i = 2
    while i < len(data):
        assert data[i] == 0xFF, "not at a JPEG marker"
        marker, length = data[i + 1], int.from_bytes(data[i + 2:i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):  # start of frame: precision, height, width
            data[i + 5:i + 7] = height.to_bytes(2, "big")
            data[i + 7:i + 9] = width.to_bytes(2, "big")
            dst.write_bytes(bytes(data))
            return dst
        i += 2 + length
    raise AssertionError(f"{src}: no frame header found")


def copy_images(images: list[Path], dst: Path) -> list[Path]:
    dst.mkdir(parents=True, exist_ok=True)
    return [Path(shutil.copy(p, dst / p.name)) for p in images]
