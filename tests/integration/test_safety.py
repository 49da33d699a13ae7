"""The safety sweep: each test reproduces a way a released command lost data, ran foreign code, used unbounded
memory or failed slowly on bad input, and checks the command now refuses or reports it in one line."""

from __future__ import annotations

import base64
import io
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import webdataset as wds
from conftest import REPO, fails, free_port, jpeg_claiming_size, truncated_jpeg, untrained_generator_checkpoint
from PIL import Image

from vsa_dist.cli import main as vsa
from vsa_dist.data.shards import load_manifest
from vsa_dist.io import sha256_file


def build(*args: str) -> dict:
    return vsa(["shards", "build", "--progress", "false", *args])


def rotated_jpeg(src: Path, dst: Path) -> Path:
    """A 224x120 crop saved with EXIF orientation 6 (shown turned by 90 degrees: 120 wide, 224 high)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.open(src).crop((0, 0, 224, 120)).save(dst, "JPEG", exif=exif)
    return dst


class Exploit:
    """What an attacker puts in python_model.pkl: unpickling it writes a marker file."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('pwned')",)


@pytest.fixture(scope="module")
def captioner_uri(tmp_path_factory, mini_features):
    """An untrained generator registered as a captioner in a sqlite tracking store, the way train-mrnn logs one."""
    import mlflow

    from vsa_dist.features.format import load_features_manifest
    from vsa_dist.serving import log_captioner

    root = tmp_path_factory.mktemp("registry")
    checkpoint = untrained_generator_checkpoint(mini_features, root / "best.pt")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    try:
        mlflow.set_tracking_uri(uri)
        experiment = mlflow.create_experiment("safety", artifact_location=(root / "artifacts").as_uri())
        with mlflow.start_run(experiment_id=experiment):
            log_captioner(checkpoint, "safety-captioner", load_features_manifest(mini_features), beam=1, max_len=8,
                          length_penalty=0.0, dev_cider=0.0, alias="champion", dev_data="x")
    finally:
        del os.environ["MLFLOW_TRACKING_URI"]
    return uri, "models:/safety-captioner@champion"


def test_a_model_folder_is_data_never_code(tmp_path, captioner_uri, mini_images, monkeypatch, capsys):
    import mlflow
    import mlflow.artifacts

    from vsa_dist.serving import Captioner

    tracking, uri = captioner_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    mlflow.set_tracking_uri(tracking)
    logged = Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(tmp_path / "logged")))
    # Logged from code: MLflow's loader runs the folder's code file (what `mlflow models serve` does), no pickle.
    assert not (logged / "python_model.pkl").exists()
    code = logged / "captioner.py"
    assert code.read_text() == (REPO / "vsa_dist" / "model_code" / "captioner.py").read_text()
    marker = tmp_path / "PWNED"
    code.write_text(code.read_text() + f"\nopen({str(marker)!r}, 'w').write('pwned')\n")
    # A folder in the older, pickled form: python_model.pkl replaced by an exploit.
    pickled = tmp_path / "pickled"
    shutil.copytree(logged, pickled)
    pickled_meta = (pickled / "MLmodel").read_text().replace("loader_module: mlflow.pyfunc.loaders.code_model",
                                                             "loader_module: mlflow.pyfunc.model")
    (pickled / "MLmodel").write_text(pickled_meta.replace("python_version:", "python_model: python_model.pkl\n"
                                                                            "    python_version:"))
    (pickled / "python_model.pkl").write_bytes(pickle.dumps(Exploit(marker)))

    image = str(mini_images[0])
    for folder in (logged, pickled):
        printed = vsa(["caption", image, "--model", str(folder)])
        assert len(printed) == 1 and printed[0][0] == image
        assert not marker.exists(), f"vsa caption ran code from {folder}"
    # The same captioner object the served model builds, from the same artifacts
    assert isinstance(mlflow.pyfunc.load_model(str(logged)).unwrap_python_model(), Captioner)
    assert marker.exists()  # the control: MLflow's own loader does run a model folder's code


def test_caption_gives_every_image_its_own_result(tmp_path, captioner_uri, mini_images, monkeypatch, capsys):
    tracking, uri = captioner_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    folder = tmp_path / "photos"
    folder.mkdir()
    good = [Path(shutil.copy(p, folder / f"{n}-good.jpg")) for n, p in enumerate(mini_images[:2])]
    (folder / "1-empty.jpg").write_bytes(b"")
    (folder / "1-text.jpg").write_text("not an image")
    jpeg_claiming_size(mini_images[2], folder / "1-bomb.jpg", 30000, 30000)
    truncated = truncated_jpeg(mini_images[3], folder / "1-truncated.jpg", keep=0.3)
    bad = {"1-empty.jpg": "file is empty", "1-text.jpg": "cannot identify image", "1-bomb.jpg": "pixels > limit"}
    for batch in ("1", "32"):
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            vsa(["caption", str(folder), "--model", uri, "--batch-size", batch])
        out, err = capsys.readouterr()
        assert exc.value.code == 1
        captioned = [line.split("\t")[0] for line in out.strip().splitlines()]
        assert {str(p) for p in good} <= set(captioned), out
        for name, reason in bad.items():
            assert f"{folder / name}: error: " in err and reason in err, err
        assert str(truncated) in captioned or f"{truncated}: error: " in err
        assert "Traceback" not in err and "images captioned" in err.strip().splitlines()[-1]
    # the limit is the user's to raise: the same bytes under a higher limit get past the header check
    from vsa_dist.data.images import check_image

    assert check_image((folder / "1-bomb.jpg").read_bytes(), max_pixels=10**9) == (30000, 30000)


def test_regions_from_a_model_trained_on_whole_images_only_are_a_warning_not_repeats(captioner_uri, mini_images,
                                                                                     monkeypatch, capsys):
    """Its region captions would repeat the whole image's caption: one line says so, and whole images are captioned."""
    tracking, uri = captioner_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    said = vsa(["caption", str(mini_images[0]), str(mini_images[1]), "--model", uri, "--regions", "3"])
    captured = capsys.readouterr()
    assert [path for path, _ in said] == [str(mini_images[0]), str(mini_images[1])]  # no region lines
    assert captured.out.count("\n") == 2
    warning = [line for line in captured.err.splitlines() if "warning" in line]
    assert len(warning) == 1 and "trained on whole images only" in warning[0], captured.err
    assert "vsa caption: model safety-captioner/1 (@champion" in captured.err, captured.err


def test_served_captioner_answers_each_image_a_bad_one_with_its_reason(tmp_path, captioner_uri, mini_images,
                                                                       monkeypatch):
    from vsa_dist.data.images import open_rgb
    from vsa_dist.registry import model_folder

    tracking, uri = captioner_uri
    monkeypatch.setenv("MLFLOW_TRACKING_URI", tracking)
    port = free_port()
    log = open(tmp_path / "serve.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local",
                               "-h", "127.0.0.1", "-p", str(port)],
                              env={**os.environ, "MLFLOW_TRACKING_URI": tracking,
                                   "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"},
                              stdout=log, stderr=subprocess.STDOUT)

    def post(images: list[bytes]) -> tuple[int, dict]:
        body = json.dumps({"dataframe_split": {"columns": ["image"],
                                               "data": [[base64.b64encode(i).decode()] for i in images]}}).encode()
        request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    try:
        deadline = time.time() + 180
        while True:
            try:
                status, answer = post([mini_images[0].read_bytes()])
                break
            except OSError:  # not listening yet
                assert server.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(1)
        assert status == 200 and answer["predictions"][0]["caption"] and not answer["predictions"][0]["error"]
        bomb = jpeg_claiming_size(mini_images[1], tmp_path / "bomb.jpg", 30000, 30000).read_bytes()
        status, answer = post([mini_images[0].read_bytes(), b"", bomb])
        # one bad image fails itself, not the request: the good one keeps its caption, each bad one its reason
        assert status == 200, answer
        good, empty, bombed = answer["predictions"]
        assert good["caption"] and good["error"] == ""
        assert empty["caption"] == "" and empty["error"].startswith("image 1: ") and "file is empty" in empty["error"]
        assert bombed["caption"] == "" and bombed["error"].startswith("image 2: ")
        assert "pixels > limit" in bombed["error"]
        assert "Traceback" not in json.dumps(answer) and "site-packages" not in json.dumps(answer)
        # the model's own input example is a real photo, from its test images, and the server answers it
        example = json.loads((model_folder(uri) / "serving_input_example.json").read_text())
        picture = base64.b64decode(example["dataframe_split"]["data"][0][0])
        assert open_rgb(picture).size[0] > 100, "a real photo, not the drawn 64 x 48 stand-in"
        status, answer = post([picture])
        assert status == 200 and answer["predictions"][0]["caption"]
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_a_foreign_file_in_out_is_never_deleted(tmp_path, mini_dir, mini_features, capsys):
    out = tmp_path / "o"
    out.mkdir()
    stranger = out / "imagenet-train-000001.tar"
    stranger.write_text("x")
    line = fails(capsys, "shards", "build", "--root", str(mini_dir), "--out", str(out), "--progress", "false")
    assert f"{out}: not empty and holds no vsa shards manifest" in line and stranger.read_text() == "x"
    for argv in (["features", "--shards", str(mini_features.parent / "shards")],
                 ["align-snippets", "--checkpoint", str(REPO / "pyproject.toml"), "--features", str(mini_features)]):
        line = fails(capsys, *argv, "--out", str(out))
        assert str(out) in line and stranger.read_text() == "x"
    # an output folder of another stage is not taken over either
    line = fails(capsys, "shards", "build", "--root", str(mini_dir), "--out", str(mini_features), "--progress", "false")
    assert "holds vsa features output, not shards" in line

    # our own folder: a rerun with another plan removes its own stale shards, and only those
    shards = tmp_path / "shards"
    build("--root", str(mini_dir), "--out", str(shards), "--samples-per-shard", "40")
    assert (shards / "train-000002.tar").exists()
    lookalike = shards / "train-000099.tar"
    lookalike.write_text("not ours")
    build("--root", str(mini_dir), "--out", str(shards), "--samples-per-shard", "100")
    assert not (shards / "train-000002.tar").exists() and not (shards / "_state" / "train-000002.tar.json").exists()
    assert lookalike.read_text() == "not ours"


def test_a_damaged_completion_record_means_redo_that_shard(tmp_path, mini_dir):
    out = tmp_path / "shards"
    args = ("--root", str(mini_dir), "--out", str(out), "--samples-per-shard", "50")
    first = build(*args)
    (out / "_state" / "train-000000.tar.json").write_text('{"plan": "abc", "samp')
    (out / "_state" / "dev-000000.tar.json").write_text("[1, 2]")
    again = build(*args)
    assert (again["build"]["shards_built"], again["build"]["shards_reused"]) == (2, 2)
    assert again["splits"] == first["splits"]


def test_out_that_is_a_file_is_one_line(tmp_path, mini_dir, capsys):
    target = tmp_path / "file"
    target.write_text("keep me")
    assert "is a file" in fails(capsys, "shards", "build", "--root", str(mini_dir), "--out", str(target))
    assert target.read_text() == "keep me"


def flickr_root(tmp_path: Path, mini_dir: Path, token_lines: list[str], splits: dict[str, list[str]],
                images: list[Path] = ()) -> Path:
    root = tmp_path / "data"
    (root / "images").mkdir(parents=True)
    for image in images:
        shutil.copy(image, root / "images" / image.name)
    (root / "Flickr8k.token.txt").write_text("\n".join(token_lines) + "\n")
    for split, names in splits.items():
        (root / f"Flickr_8k.{split}Images.txt").write_text("\n".join(names) + "\n")
    return root


def test_byte_order_marks_and_non_utf8_split_lists(tmp_path, mini_dir, mini_images, capsys):
    names = [p.name for p in mini_images[:3]]
    root = flickr_root(tmp_path, mini_dir, [f"{n}#0\tA dog runs ." for n in names],
                       {"train": names[:1], "dev": names[1:2], "test": names[2:]}, mini_images[:3])
    for path in (root / "Flickr8k.token.txt", root / "Flickr_8k.trainImages.txt"):
        path.write_bytes(b"\xef\xbb\xbf" + path.read_bytes())
    manifest = build("--root", str(root), "--out", str(tmp_path / "o"))
    assert manifest["counts"]["images"] == {"input": 3, "written": 3, "rejected": 0}
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 1, "dev": 1, "test": 1}

    (root / "Flickr_8k.devImages.txt").write_bytes(names[1].encode() + b"\n\xff\xfe.jpg\n")
    line = fails(capsys, "shards", "build", "--root", str(root), "--out", str(tmp_path / "o2"))
    assert f"{root / 'Flickr_8k.devImages.txt'}:2: not UTF-8" in line


def test_image_names_cannot_leave_the_images_folder(tmp_path, mini_dir, mini_images):
    outside = tmp_path / "secret.jpg"
    shutil.copy(mini_images[5], outside)
    names = [p.name for p in mini_images[:2]]
    escape, absolute = "../../secret.jpg", str(outside)
    root = flickr_root(tmp_path, mini_dir, [f"{n}#0\tA dog runs ." for n in [*names, escape, absolute]],
                       {"train": [names[0], escape], "dev": [names[1], absolute]}, mini_images[:2])
    out = tmp_path / "o"
    manifest = build("--root", str(root), "--out", str(out))
    assert manifest["counts"]["images"] == {"input": 4, "written": 2, "rejected": 2}
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    assert {r["image"] for r in rejects if r["reason"] == "outside-root"} == {escape, absolute}
    samples = {s["__key__"] for s in wds.WebDataset(sorted(map(str, out.glob("*.tar"))), shardshuffle=False,
                                                     empty_check=False)}
    assert "secret" not in samples and len(samples) == 2


def test_coco_ids_nesting_and_yaml_are_one_line_errors(tmp_path, mini_dir, mini_images, capsys):
    root = tmp_path / "coco"
    root.mkdir()
    shutil.copy(mini_images[0], root / mini_images[0].name)
    base = {"images": [{"id": 1, "file_name": mini_images[0].name}],
            "annotations": [{"id": 1, "image_id": 1, "caption": "A dog ."},
                            {"id": 2, "image_id": [1], "caption": "A list id ."},
                            {"id": {"a": 1}, "image_id": 1, "caption": "A dict id ."}]}
    (root / "captions_val2014.json").write_text(json.dumps(base))
    out = tmp_path / "o"
    manifest = build("--format", "coco", "--root", str(root), "--out", str(out))
    assert manifest["counts"]["sentences"] == {"input": 3, "written": 1, "rejected": 2}
    assert manifest["rejects"]["by_reason"]["sentence:bad-id"] == 2

    (root / "captions_val2014.json").write_text(json.dumps({**base, "images": [{"id": [1], "file_name": "a.jpg"}]}))
    line = fails(capsys, "shards", "build", "--format", "coco", "--root", str(root), "--out", str(tmp_path / "o2"))
    assert "captions_val2014.json: images[0].id is list" in line
    (root / "captions_val2014.json").write_text('{"images": ' + "[" * 100000 + "]" * 100000 + "}")
    line = fails(capsys, "shards", "build", "--format", "coco", "--root", str(root), "--out", str(tmp_path / "o3"))
    assert "captions_val2014.json: JSON nested too deeply" in line

    config = tmp_path / "bad.yaml"
    config.write_text("samples_per_shard: [1,\n")
    line = fails(
        capsys, "shards", "build", "--config", str(config), "--root", str(mini_dir), "--out", str(tmp_path / "o4")
    )
    assert f"{config}:" in line and "not valid YAML" in line


def test_a_build_with_nothing_trainable_fails(tmp_path, mini_dir, mini_images, capsys):
    names = [p.name for p in mini_images[:2]]
    root = flickr_root(tmp_path, mini_dir, [f"{n}#0\tA dog runs ." for n in names], {}, mini_images[:2])
    line = fails(capsys, "shards", "build", "--root", str(root), "--out", str(tmp_path / "o1"))
    assert "no image is in train, dev or test" in line and "--split-files" in line
    shutil.rmtree(root / "images")
    (root / "Flickr_8k.trainImages.txt").write_text("\n".join(names) + "\n")
    line = fails(capsys, "shards", "build", "--root", str(root), "--out", str(tmp_path / "o2"))
    assert "no image was written: 2 of 2 rejected (missing-file 2" in line
    rejects = [json.loads(line) for line in (tmp_path / "o2" / "rejects.jsonl").read_text().splitlines()]
    assert sorted(r["image"] for r in rejects if r["reason"] == "missing-file") == sorted(names)  # nothing lost


def test_features_check_their_input_shards(tmp_path, mini_shards, mini_images, ray_cluster, capsys):
    manifest = load_manifest(mini_shards)
    shards = tmp_path / "shards"
    shards.mkdir()
    info = manifest["splits"]["dev"]["shards"][0]
    source = mini_shards / info["shard"]
    target = shards / info["shard"]
    # every sample of the first dev shard, then four bad ones: a symlink member for its JPEG, no JPEG at all,
    # a key that climbs out of the folder, and a portrait photo whose EXIF turns it
    with tarfile.open(target, "w") as tar:
        with tarfile.open(source) as original:
            for member in original.getmembers():
                tar.addfile(member, original.extractfile(member))
        meta = json.loads(next(iter(wds.WebDataset(str(source), shardshuffle=False, empty_check=False)))["json"])

        def add(name: str, data: bytes | None = None, link: str | None = None) -> None:
            member = tarfile.TarInfo(name)
            if link is not None:
                member.type, member.linkname = tarfile.SYMTYPE, link
                tar.addfile(member)
            else:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))

        def sample(key: str) -> None:
            add(f"{key}.json", json.dumps({**meta, "file_name": f"{key}.jpg"}).encode())

        sample("linked")
        add("linked.jpg", link="/etc/passwd")
        sample("nojpeg")
        sample("../../escape")
        add("../../escape.jpg", mini_images[0].read_bytes())
        sample("rotated")
        add("rotated.jpg", rotated_jpeg(mini_images[1], tmp_path / "r.jpg").read_bytes())
    manifest["splits"] = {"dev": {**manifest["splits"]["dev"], "images": info["samples"] + 4,
                                  "shards": [{**info, "samples": info["samples"] + 4, "sha256": sha256_file(target)}]}}
    (shards / "manifest.json").write_text(json.dumps(manifest))

    out = tmp_path / "features"
    result = vsa(["features", "--shards", str(shards), "--out", str(out), "--progress", "false"])
    assert result["counts"]["images"] == {"input": info["samples"] + 4, "written": info["samples"] + 1, "rejected": 3}
    rejects = {r["key"]: r for r in map(json.loads, (out / "rejects.jsonl").read_text().splitlines())}
    assert set(rejects) == {"linked", "nojpeg", "../../escape"}
    assert (
        "no image bytes" in rejects["linked"]["detail"]
        and "leave the output folder" in rejects["../../escape"]["detail"]
    )
    for sample in wds.WebDataset(str(out / info["shard"]), shardshuffle=False, empty_check=False):
        assert ".." not in sample["__key__"]
        if sample["__key__"] == "rotated":
            boxes = __import__("numpy").load(io.BytesIO(sample["boxes.npy"]))
            assert boxes[:, 2].max() <= 120 + 1e-3 and boxes[:, 3].max() > 120  # boxes in the shown, portrait frame

    # a shard changed after its manifest was written is refused, by name, before any work
    with open(target, "ab") as fh:
        fh.write(b"\0" * 1024)
    line = fails(capsys, "features", "--shards", str(shards), "--out", str(tmp_path / "f2"), "--progress", "false")
    assert f"{target}: input shard does not match the sha256 in its manifest; rebuild it (vsa shards build" in line


def test_an_unreachable_tracking_server_fails_in_seconds(mini_features, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    line = fails(capsys, "train-align", "--features", str(mini_features), "--out", str(tmp_path / "a"),
                 "--epochs", "1", "--batch-size", "20")
    assert "MLflow tracking server http://127.0.0.1:9 does not answer" in line
    assert not (tmp_path / "a" / "ray").exists()  # Ray Train never started


def test_a_checkpoint_that_is_not_plain_weights_is_refused_in_one_line(tmp_path, mini_features, capsys):
    import torch
    from conftest import untrained_alignment_checkpoint

    good = untrained_alignment_checkpoint(mini_features, tmp_path / "good.pt")
    state = torch.load(good, weights_only=True)
    state["extra"] = Exploit(tmp_path / "PWNED")
    torch.save(state, tmp_path / "evil.pt")
    evil = str(tmp_path / "evil.pt")
    for argv in (
        ["eval", "retrieval", "--checkpoint", evil, "--features", str(mini_features)],
        ["align-snippets", "--checkpoint", evil, "--features", str(mini_features), "--out", str(tmp_path / "s")],
        ["report", str(tmp_path), "--align", evil, "--captioner", evil, "--features", str(mini_features)],
    ):
        assert "refused: it holds Python objects" in fails(capsys, *argv)
    assert not (tmp_path / "PWNED").exists()


def test_a_killed_local_run_leaves_no_ray_process_behind(tmp_path):
    import psutil

    script = tmp_path / "driver.py"
    script.write_text("import time\nfrom vsa_dist.ray_env import ensure_ray\nensure_ray(False)\n"
                      "print('ready', flush=True)\ntime.sleep(600)\n")
    driver = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": "local"}, text=True)
    try:
        assert driver.stdout.readline().strip() == "ready"
        agents: list[psutil.Process] = []
        deadline = time.time() + 60
        while time.time() < deadline and len(agents) < 2:  # the agents the raylet starts, which outlived drivers
            agents = [p for p in psutil.Process(driver.pid).children(recursive=True)
                      if " ".join(p.cmdline()).startswith(("ray::DashboardAgent", "ray::RuntimeEnvAgent"))]
            time.sleep(0.5)
        family = psutil.Process(driver.pid).children(recursive=True)
        assert len(agents) == 2 and family
    finally:
        driver.kill()
        driver.wait()
    gone, alive = psutil.wait_procs(family, timeout=60)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, [p.name() for p in alive]


def test_eval_on_data_the_model_was_not_trained_on_says_so(tmp_path, mini_features, capsys):
    """A model whose vocabulary is another data set's (here: mini's words but the last 50) scored on mini's test
    split: the scores come, with a line on stderr and a record of how much of the split the model cannot read."""
    import json as jsonlib

    import torch
    from conftest import untrained_alignment_checkpoint, write_untrained

    from vsa_dist import config as cfglib
    from vsa_dist.cli import main as vsa
    from vsa_dist.models.alignment import AlignmentModel
    from vsa_dist.recipes.align import AlignConfig, model_args

    manifest = jsonlib.loads((mini_features / "manifest.json").read_text())
    other = {**manifest, "vocab": {"words": manifest["vocab"]["words"][:-50]}}
    cfg = cfglib.resolve(AlignConfig, None, {"features": str(mini_features), "embed_dim": 32, "word_dim": 16})
    torch.manual_seed(0)
    model = AlignmentModel(model_args(cfg, len(other["vocab"]["words"]) + 2, manifest["settings"]["feature_dim"]))
    checkpoint = write_untrained(tmp_path / "other.pt", model, cfg, other)
    capsys.readouterr()
    metrics = vsa(["eval", "retrieval", "--checkpoint", str(checkpoint), "--features", str(mini_features)])
    err = capsys.readouterr().err
    assert f"{mini_features} is not the data {checkpoint} was trained on" in err
    record = metrics["other_data"]
    assert record["features_vocabulary"] == len(manifest["vocab"]["words"]) and record["model_vocabulary"] == \
        len(manifest["vocab"]["words"]) - 50 and 0 < record["unknown_word_share"] < 1
    own = untrained_alignment_checkpoint(mini_features, tmp_path / "own.pt")
    assert "other_data" not in vsa(["eval", "retrieval", "--checkpoint", str(own), "--features", str(mini_features)])
