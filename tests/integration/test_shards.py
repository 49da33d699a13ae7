"""Shard builder: real tars from the mini set and from Karpathy/COCO fixtures, with broken inputs."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from conftest import copy_images, jpeg_claiming_size, truncated_jpeg

from vsa_dist.cli import main as vsa
from vsa_dist.data.shards import load_manifest, shard_paths
from vsa_dist.io import sha256_file


def build(*args: str) -> dict:
    return vsa(["shards", "build", "--progress", "false", *args])


def read_back_wds(out: Path) -> dict[str, dict]:
    samples = {}
    for sample in wds.WebDataset(shard_paths(out), shardshuffle=False, empty_check=False):
        assert sample["__key__"] not in samples, "duplicate sample key"
        samples[sample["__key__"]] = {"jpg": sample["jpg"], "meta": json.loads(sample["json"])}
    return samples


def token_captions(token_file: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in token_file.read_text().splitlines():
        head, caption = line.split("\t")
        out.setdefault(head.rsplit("#", 1)[0], []).append(caption.strip())
    return out


def assert_accounting(manifest: dict, out: Path) -> list[dict]:
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    for kind, plural in (("image", "images"), ("sentence", "sentences")):
        counts = manifest["counts"][plural]
        assert counts["written"] + counts["rejected"] == counts["input"], counts
        assert counts["rejected"] == sum(r["kind"] == kind for r in rejects)
    for r in rejects:
        assert r["reason"] and r["detail"] and r["source"], r
    return rejects


def test_flickr8k_mini_every_sentence_survives(tmp_path, mini_dir, ray_cluster):
    out = tmp_path / "shards"
    manifest = build("--format", "flickr8k", "--root", str(mini_dir), "--out", str(out), "--samples-per-shard", "40")
    assert manifest["counts"]["images"] == {"input": 200, "written": 200, "rejected": 0}
    assert manifest["counts"]["sentences"] == {"input": 1000, "written": 1000, "rejected": 0}
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 100, "dev": 50, "test": 50}
    assert len(manifest["splits"]["train"]["shards"]) == 3  # 40 + 40 + 20
    for info in manifest["splits"].values():
        for shard in info["shards"]:
            assert sha256_file(out / shard["shard"]) == shard["sha256"]
    assert manifest["vocab"]["min_count"] == 5
    assert all(c >= 5 for c in manifest["vocab"]["counts"].values()) and "a" in manifest["vocab"]["words"]

    expected = token_captions(mini_dir / "Flickr8k.token.txt")
    split_of = {name: split for split in ("train", "dev", "test")
                for name in (mini_dir / f"Flickr_8k.{split}Images.txt").read_text().split()}

    # 1) the webdataset library
    samples = read_back_wds(out)
    assert len(samples) == 200
    for sample in samples.values():
        meta = sample["meta"]
        assert [s["raw"] for s in meta["sentences"]] == expected[meta["file_name"]]
        assert sample["jpg"] == (mini_dir / "images" / meta["file_name"]).read_bytes()  # bytes unchanged
        assert meta["split"] == split_of[meta["file_name"]]
        assert all(s["tokens"] for s in meta["sentences"])

    # 2) Ray Data on a real local cluster
    ds = ray_cluster.data.read_webdataset(shard_paths(out))
    rows = ds.take_all()
    assert len(rows) == 200
    seen = Counter()
    for row in rows:
        meta = row["json"]
        assert [s["raw"] for s in meta["sentences"]] == expected[meta["file_name"]]
        assert row["jpg"].shape == (224, 224, 3)  # decoded by Ray's webdataset decoder
        seen[meta["split"]] += len(meta["sentences"])
    assert seen == {"train": 500, "dev": 250, "test": 250}


def test_flickr_format_bad_inputs_are_rejected_not_lost(tmp_path, mini_dir, mini_images):
    root = tmp_path / "flickr"
    images = root / "images"
    good = copy_images(mini_images[:6], images)
    truncated_jpeg(mini_images[6], images / "truncated.jpg")
    (images / "notimage.jpg").write_text("this is not a picture")
    jpeg_claiming_size(mini_images[7], images / "bomb.jpg", 30000, 30000)
    copy_images([mini_images[8]], images)  # listed without captions below

    lines = []
    for p in good:
        lines += [f"{p.name}#{i}\tA dog runs on the grass number {i} ." for i in range(5)]
    lines += ["truncated.jpg#0\tA broken picture .", "notimage.jpg#0\tNot a picture .", "bomb.jpg#0\tHuge ."]
    lines += ["missing.jpg#0\tThis file does not exist ."]
    lines += [f"{good[3].name}#0\tduplicate caption id ."]          # duplicate id
    lines += [f"{good[1].name}#5\t   ", f"{good[1].name}#6\t. , !"]  # empty captions
    body = ("\n".join(lines) + "\n").encode() + f"{good[2].name}#7\t".encode() + b"caf\xe9 latin-1\n"
    (root / "Flickr8k.token.txt").write_bytes(body)
    names = [p.name for p in good]
    (root / "Flickr_8k.trainImages.txt").write_text(
        "\n".join(names[:4] + ["truncated.jpg", "notimage.jpg", "bomb.jpg", "missing.jpg", mini_images[8].name]) + "\n"
    )
    (root / "Flickr_8k.devImages.txt").write_text(names[4] + "\n")
    (root / "Flickr_8k.testImages.txt").write_text(names[5] + "\n" + names[0] + "\n")  # names[0] also in train

    out = tmp_path / "out"
    manifest = build("--format", "flickr8k", "--root", str(root), "--out", str(out))
    rejects = assert_accounting(manifest, out)
    image_reasons = {r["image"]: r["reason"] for r in rejects if r["kind"] == "image"}
    assert image_reasons == {
        "truncated.jpg": "corrupt-image", "notimage.jpg": "not-an-image", "bomb.jpg": "too-many-pixels",
        "missing.jpg": "missing-file", mini_images[8].name: "no-captions", names[0]: "split-conflict",
    }
    sentence_reasons = Counter(r["reason"] for r in rejects if r["kind"] == "sentence")
    # names[0]'s 5 captions go with it, as do the 4 broken images' captions
    assert sentence_reasons == {"image-rejected": 5 + 4, "duplicate-id": 1, "empty-caption": 2, "not-utf8": 1}
    assert all(r["source"].startswith(("Flickr8k.token.txt:", "Flickr_8k.")) for r in rejects)
    assert manifest["counts"]["images"] == {"input": 11, "written": 5, "rejected": 6}
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 3, "dev": 1, "test": 1}
    assert len(read_back_wds(out)) == 5


def _karpathy_fixture(root: Path, mini_images: list[Path]) -> dict:
    copy_images(mini_images[:8], root / "images" / "Flicker8k_Dataset")
    truncated_jpeg(mini_images[8], root / "images" / "Flicker8k_Dataset" / "broken.jpg")
    splits = ["train", "train", "restval", "val", "val", "test", "test", "train"]
    items = []
    for i, (p, split) in enumerate(zip(mini_images[:8], splits)):
        items.append(
            {
                "filepath": "Flicker8k_Dataset",
                "filename": p.name,
                "imgid": i,
                "split": split,
                "sentences": [
                    {"raw": f"A person number {k} stands .", "tokens": ["a", "person", "number", str(k), "stands"]}
                    for k in range(5)
                ],
            }
        )
    items[7]["split"] = "holdout"  # unknown split
    items[1]["sentences"].append({"raw": "", "tokens": []})  # empty
    items.append(dict(items[0]))  # duplicate image
    items.append({"filepath": "Flicker8k_Dataset", "filename": "broken.jpg", "imgid": 99, "split": "train",
                  "sentences": [{"raw": "Broken .", "tokens": ["broken"]}]})
    items.append(
        {
            "filepath": "Flicker8k_Dataset",
            "filename": mini_images[9].name,
            "imgid": 100,
            "split": "train",
            "sentences": [],
        }
    )
    data = {"dataset": "flickr8k", "images": items}
    (root / "dataset_flickr8k.json").write_text(json.dumps(data))
    return data


def test_karpathy_json(tmp_path, mini_images):
    root = tmp_path / "karpathy"
    data = _karpathy_fixture(root, mini_images)
    out = tmp_path / "out"
    manifest = build("--format", "karpathy", "--root", str(root), "--out", str(out))
    rejects = assert_accounting(manifest, out)
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 2, "restval": 1, "dev": 2, "test": 2}
    assert manifest["counts"]["images"]["input"] == len(data["images"])
    assert manifest["counts"]["sentences"]["input"] == sum(len(i["sentences"]) for i in data["images"])
    reasons = Counter((r["kind"], r["reason"]) for r in rejects)
    assert reasons == {
        ("image", "unknown-split"): 1,
        ("image", "duplicate-id"): 1,
        ("image", "corrupt-image"): 1,
        ("image", "no-captions"): 1,
        ("sentence", "empty-caption"): 1,
        ("sentence", "image-rejected"): 5 + 5 + 1,
    }
    samples = read_back_wds(out)
    assert len(samples) == 7
    assert all(
        s["meta"]["sentences"][0]["tokens"] == ["a", "person", "number", "0", "stands"] for s in samples.values()
    )


def test_coco_captions_with_karpathy_split(tmp_path, mini_images):
    root = tmp_path / "coco"
    files = {}
    for subdir, imgs in (("train2014", mini_images[:4]), ("val2014", mini_images[4:8])):
        for p in imgs:
            name = f"COCO_{subdir}_{len(files):012d}.jpg"
            (root / subdir).mkdir(parents=True, exist_ok=True)
            (root / subdir / name).write_bytes(p.read_bytes())
            files[name] = (subdir, len(files) + 1)
    ann_id = 0
    for subdir in ("train2014", "val2014"):
        images, anns = [], []
        for name, (sd, image_id) in files.items():
            if sd != subdir:
                continue
            images.append({"id": image_id, "file_name": name, "width": 224, "height": 224})
            for k in range(5 if image_id != 4 else 0):  # image 4 has no captions
                ann_id += 1
                anns.append({"id": ann_id, "image_id": image_id, "caption": f"A cat sits on mat {k}."})
        anns.append({"id": 9999, "image_id": 777, "caption": "An orphan caption."})
        if subdir == "val2014":
            anns.append(dict(anns[0]))  # duplicate annotation id
        (root / f"captions_{subdir}.json").write_text(json.dumps({"images": images, "annotations": anns}))
    split_names = ["train", "train", "restval", "train", "val", "val", "test", "test"]
    (root / "dataset_coco.json").write_text(json.dumps({"images": [
        {"filepath": files[n][0], "filename": n, "split": s, "sentences": []} for n, s in zip(files, split_names)]}))

    out = tmp_path / "out"
    manifest = build("--format", "coco", "--root", str(root), "--out", str(out),
                     "--split-from", str(root / "dataset_coco.json"))
    rejects = assert_accounting(manifest, out)
    assert {s: v["images"] for s, v in manifest["splits"].items()} == {"train": 2, "restval": 1, "dev": 2, "test": 2}
    assert Counter((r["kind"], r["reason"]) for r in rejects) == {
        ("image", "no-captions"): 1, ("sentence", "unknown-image"): 2, ("sentence", "duplicate-id"): 1}
    samples = read_back_wds(out)
    assert len(samples) == 7
    assert {s["meta"]["image_id"] for s in samples.values()} == {"1", "2", "3", "5", "6", "7", "8"}


def test_malformed_input_files_stop_with_file_and_line(tmp_path, capsys, mini_dir):
    root = tmp_path / "bad"
    root.mkdir()
    (root / "dataset_x.json").write_text('{"images": [\n {"filename": "a.jpg",}\n]}')
    with pytest.raises(SystemExit) as exc:
        build("--format", "karpathy", "--root", str(root), "--out", str(tmp_path / "o1"))
    assert exc.value.code == 2
    assert "dataset_x.json:2: not valid JSON" in capsys.readouterr().err

    (root / "Flickr8k.token.txt").write_text("a.jpg#0\tA fine caption .\na.jpg#1 no tab here\n")
    with pytest.raises(SystemExit):
        build("--format", "flickr8k", "--root", str(root), "--out", str(tmp_path / "o2"))
    assert "Flickr8k.token.txt:2: expected '<image>#<n><TAB><caption>', found no tab" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exc:  # config typo: a clear error, not a silent default
        build("--root", str(mini_dir), "--out", str(tmp_path / "o3"), "--samples-per-shard", "many")
    assert exc.value.code == 2 and "samples_per_shard" in capsys.readouterr().err
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("sample_per_shard: 10\n")
    with pytest.raises(SystemExit):
        build("--config", str(cfg), "--root", str(mini_dir), "--out", str(tmp_path / "o4"))
    assert "unknown config key(s) ['sample_per_shard']" in capsys.readouterr().err


def test_rerun_skips_verified_shards_and_rebuilds_damaged(tmp_path, mini_dir):
    out = tmp_path / "shards"
    args = ("--root", str(mini_dir), "--out", str(out), "--samples-per-shard", "50")
    first = build(*args)
    assert (first["build"]["shards_built"], first["build"]["shards_reused"]) == (4, 0)

    again = build(*args)
    assert (again["build"]["shards_built"], again["build"]["shards_reused"]) == (0, 4)

    damaged = out / "train-000001.tar"
    damaged.write_bytes(damaged.read_bytes()[:5000])   # a shard cut short
    (out / "dev-000000.tar").unlink()                   # a shard gone
    (out / ".test-000000.tar.abc.tmp").write_bytes(b"left by a killed run")
    third = build(*args)
    assert (third["build"]["shards_built"], third["build"]["shards_reused"]) == (2, 2)
    assert not list(out.glob(".*.tmp"))
    assert third["splits"] == first["splits"]  # identical bytes: same sha256 as the first build
    assert len(read_back_wds(out)) == 200
    assert load_manifest(out)["counts"] == first["counts"]


def test_outputs_get_ordinary_file_modes(tmp_path, mini_dir):
    import os
    import stat

    out = tmp_path / "shards"
    build("--root", str(mini_dir), "--out", str(out))
    mask = os.umask(0)
    os.umask(mask)
    for path in [out / "manifest.json", out / "rejects.jsonl", *out.glob("*.tar")]:
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask, path


def test_the_catalog_is_a_file_that_leaves_nothing_behind(tmp_path, mini_dir):
    """The catalog lives in an SQLite file beside the output, unlinked as soon as it is open: the build's memory does
    not hold the data set, and a killed build leaves no scratch file. Its entries are the set's, in key order."""
    from vsa_dist.data.sources import read_source

    scratch = tmp_path / "runs"
    scratch.mkdir()
    with read_source("flickr8k", mini_dir, scratch=scratch) as catalog:
        assert list(scratch.iterdir()) == []  # nothing there while it is in use
        assert len(catalog) == 200 and catalog.split_sizes() == {"dev": 50, "test": 50, "train": 100}
        chunks = list(catalog.entries("train", 30))
        assert [len(c) for c in chunks] == [30, 30, 30, 10]
        keys = [e.key for c in chunks for e in c]
        assert keys == sorted(keys) and all(len(e.sentences) == 5 and e.path.is_file() for c in chunks for e in c)
        assert all(isinstance(s["tokens"], list) and s["ref"].startswith("Flickr8k.token.txt:")
                   for c in chunks for e in c for s in e.sentences)
    assert list(scratch.iterdir()) == []
