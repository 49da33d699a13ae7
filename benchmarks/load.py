"""COCO-scale rehearsal: `vsa shards build` and `vsa features` on a synthetic set of 120k images, given both in
Flickr's token format and COCO's (captions_*.json, split by a Karpathy dataset_coco.json), each large stage killed
once mid-way and resumed, against the same commands on full Flickr8k.

    python benchmarks/load.py                      # 120,000 images (about 50 minutes on 2 cores, ~10 GB of disk)
    python benchmarks/load.py --sets coco --stages shards   # rerun one stage of one set (its shards stay for features)
    python benchmarks/load.py --catalog            # what reading the captions costs the shard builder, each set
    python benchmarks/load.py --images 600 --baseline flickr8k-mini --samples-per-shard 50 --work /tmp/lb
                                                   # a quick rehearsal of the rehearsal (a few minutes)

The synthetic images are Flickr8k's, each re-encoded (JPEG quality 85-95, every other cycle mirrored) under a new
name, split train/dev/test 90/5/5 %. The Flickr-format set gives each five captions drawn from the token file; the
COCO-shaped one gives five, and six or seven to one image in 50 and 200 (COCO has 5 to 7), as `captions_train2014.json`
(train) and `captions_val2014.json` (dev and test), with a `dataset_coco.json` that carries the split and every
sentence with its tokens, as Karpathy's does. Both read one images folder.
Memory is the peak PSS of each command's whole process tree (driver, Ray and its workers) and, of the driver, its
peak RSS and its own memory: RSS less the pages of Ray's object store it has mapped (shared, the store's; see
benchmarks/common.py), sampled every 0.5 s; "flat" means the large run's peak over the 8k run's. Time is wall time of
the whole command, start-up included, the killed try and the resumed one added up. Writes WORK/load.json
(default runs/bench/) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from PIL import Image, ImageOps

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.common import run_stage  # noqa: E402
from vsa_dist.paths import data_root, runs_root  # noqa: E402

SPLIT_SHARES = (("train", 0.90), ("dev", 0.05), ("test", 0.05))


def _encode(job: tuple[str, str, int, bool]) -> None:
    source, target, quality, mirror = job
    image = Image.open(source).convert("RGB")
    if mirror:
        image = ImageOps.mirror(image)
    image.save(target, "JPEG", quality=quality)


def make_synthetic(flickr: Path, out: Path, count: int, seed: int = 0) -> dict:
    """A folder of ``count`` re-encoded images with drawn captions in both formats (kept if already complete)."""
    done = out / "complete.json"
    if done.is_file() and json.loads(done.read_text()).get("images") == count:
        return json.loads(done.read_text())
    shutil.rmtree(out, ignore_errors=True)
    (out / "images").mkdir(parents=True)
    sources = sorted((flickr / "images").glob("*.jpg"))
    sentences = [line.split("\t", 1)[1] for line in (flickr / "Flickr8k.token.txt").read_text().splitlines()
                 if "\t" in line]
    rng = random.Random(seed)
    names = [f"syn{i:06d}.jpg" for i in range(count)]
    jobs = [(str(sources[i % len(sources)]), str(out / "images" / names[i]), 85 + (i // len(sources)) % 11,
             (i // len(sources)) % 2 == 1) for i in range(count)]
    start = time.time()
    with ProcessPoolExecutor(2) as pool:
        list(pool.map(_encode, jobs, chunksize=256))
    order = names[:]
    rng.shuffle(order)
    split_of, begin = {}, 0
    for split, share in SPLIT_SHARES:
        end = count if split == SPLIT_SHARES[-1][0] else begin + round(share * count)
        split_of.update((name, split) for name in order[begin:end])
        begin = end
    flickr_sentences = _write_flickr(out / "flickr", names, split_of, sentences, rng)
    coco_sentences = _write_coco(out / "coco", names, split_of, sentences, rng)
    info = {"images": count, "flickr_sentences": flickr_sentences, "coco_sentences": coco_sentences,
            "seconds": round(time.time() - start, 1)}
    done.write_text(json.dumps(info))
    return info


def _write_flickr(folder: Path, names: list[str], split_of: dict[str, str], sentences: list[str],
                  rng: random.Random) -> int:
    folder.mkdir()
    (folder / "images").symlink_to("../images")
    lines = [f"{name}#{k}\t{rng.choice(sentences)}" for name in names for k in range(5)]
    (folder / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    for split, _ in SPLIT_SHARES:
        (folder / f"Flickr_8k.{split}Images.txt").write_text(
            "\n".join(sorted(n for n in names if split_of[n] == split)) + "\n")
    return len(lines)


def _write_coco(folder: Path, names: list[str], split_of: dict[str, str], sentences: list[str],
                rng: random.Random) -> int:
    folder.mkdir()
    (folder / "images").symlink_to("../images")
    files = {"captions_train2014.json": ("train",), "captions_val2014.json": ("dev", "test")}
    karpathy, annotation_id = [], 0
    for file_name, splits in files.items():
        images, annotations = [], []
        for index, name in enumerate(names):
            if split_of[name] not in splits:
                continue
            image_id = 100_000 + index
            images.append({"license": 1, "file_name": name, "height": 224, "width": 224, "id": image_id})
            drawn = [rng.choice(sentences) for _ in range(5 + (index % 50 == 0) + (index % 200 == 0))]
            for text in drawn:
                annotation_id += 1
                annotations.append({"image_id": image_id, "id": annotation_id, "caption": text})
            karpathy.append({"filepath": "", "filename": name, "cocoid": image_id, "imgid": index,
                             "split": {"dev": "val"}.get(split_of[name], split_of[name]),
                             "sentences": [{"raw": t, "tokens": t.lower().split()} for t in drawn]})
        (folder / file_name).write_text(json.dumps({"info": {"description": "synthetic, from Flickr8k"},
                                                    "images": images, "licenses": [], "annotations": annotations}))
    (folder / "dataset_coco.json").write_text(json.dumps({"images": karpathy, "dataset": "coco"}))
    return annotation_id


def catalog_memory(fmt: str, root: Path, extra: list[str]) -> dict:
    """What reading a set's captions into the shard builder's catalog costs, in a fresh process: its peak RSS over
    the RSS before (the catalog is a file on disk; this is what parsing takes)."""
    code = ("import json, resource, sys, psutil; from pathlib import Path; "
            "from vsa_dist.data.sources import read_source; "
            "before = psutil.Process().memory_info().rss; "
            "c = read_source(sys.argv[1], Path(sys.argv[2]), split_from=sys.argv[3] if len(sys.argv) > 3 else ''); "
            "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024; "
            "print(json.dumps({'images': len(c), 'sentences': c.input_sentences, "
            "'peak_mib_over_start': round((peak - before) / 2**20)}))")
    out = subprocess.run([sys.executable, "-c", code, fmt, str(root), *extra], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout)


def records_done(folder: Path) -> int:
    return len(list((folder / "_state").glob("*.tar.json"))) if (folder / "_state").is_dir() else 0


def disk_mib(folder: Path) -> int:
    out = subprocess.run(["du", "-sm", str(folder)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def stage(name: str, args: list[str], out: Path, logs: Path, kill_after_records: int = 0) -> dict:
    """Run one stage, optionally SIGKILLed once ``kill_after_records`` of its shards are complete, then resumed."""
    tries = []
    if kill_after_records:
        start = time.time()
        memory = run_stage(args, logs / f"{name}-killed.log",
                           kill_when=lambda: records_done(out) >= kill_after_records)
        tries.append({"seconds": round(time.time() - start, 1), "records_at_kill": records_done(out), **memory})
    start = time.time()
    memory = run_stage(args, logs / f"{name}.log")
    tries.append({"seconds": round(time.time() - start, 1), **memory})
    manifest = json.loads((out / "manifest.json").read_text())
    counts = manifest["counts"]["images"]
    rejects = (out / "rejects.jsonl").read_text().splitlines()
    return {"tries": tries, "seconds": round(sum(t["seconds"] for t in tries), 1),
            "peak_tree_pss_mib": max(t["peak_tree_pss_mib"] for t in tries),
            **{key: max(t[key] for t in tries)
               for key in ("peak_driver_rss_mib", "peak_driver_own_mib", "peak_driver_object_store_mib")},
            "images": counts, "rejects_listed": len([r for r in rejects if json.loads(r)["kind"] == "image"]),
            "accounted": counts["written"] + counts["rejected"] == counts["input"],
            "build": manifest["build"], "disk_mib": disk_mib(out)}


# the sets: how each is read (format, folder under the data root or the synthetic folder, extra shard flags)
SETS = ("baseline", "flickr", "coco")


def run_set(name: str, fmt: str, root: Path, extra: list[str], work: Path, kill: bool, samples_per_shard: int,
            stages: list[str]) -> dict:
    """The stages on one data set (features read the shards folder an earlier run of this set left)."""
    folders = {"shards": work / name / "shards", "features": work / name / "features"}
    logs = work / name / "logs"
    for key in stages:
        shutil.rmtree(folders[key], ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    argv = {"shards": ["shards", "build", "--format", fmt, "--root", str(root), "--out", str(folders["shards"]),
                       "--samples-per-shard", str(samples_per_shard), "--progress", "false", *extra],
            "features": ["features", "--shards", str(folders["shards"]), "--out", str(folders["features"]),
                         "--progress", "false"]}
    result = {}
    for key in stages:
        planned = 1
        if key == "features":
            planned = sum(len(v["shards"]) for v in json.loads((folders["shards"] / "manifest.json").read_text())[
                "splits"].values())
        else:  # the catalog's images over the shard size, near enough to plan when to kill
            planned = max(1, len(list((root / "images").glob("*.jpg"))) // samples_per_shard)
        result[key] = stage(key, argv[key], folders[key], logs, kill_after_records=planned // 3 if kill else 0)
        result[key]["images_per_s"] = round(result[key]["images"]["input"] / result[key]["seconds"], 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120_000, help="synthetic images (COCO has 123k)")
    parser.add_argument("--work", default=str(runs_root() / "bench"), help="where the data, shards, features go")
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--baseline", default="flickr8k", help="the data set the large runs are compared with "
                        "(flickr8k-mini for a quick rehearsal)")
    parser.add_argument("--stages", default="shards,features", help="rerun only these (the others' last results "
                        "in WORK/load.json stay); the Flickr-format large set runs shards only")
    parser.add_argument("--sets", default=",".join(SETS), help=f"rerun only these sets: {', '.join(SETS)}")
    parser.add_argument("--catalog", action="store_true", help="only measure what reading each set's captions costs")
    args = parser.parse_args(argv)
    work, stages, sets = Path(args.work), args.stages.split(","), args.sets.split(",")
    synthetic = work / f"synthetic-{args.images}"
    made = make_synthetic(data_root() / "flickr8k", synthetic / "data", args.images)
    print(f"synthetic set: {made}", flush=True)
    coco_root = synthetic / "data" / "coco"
    how = {"baseline": (args.baseline, "flickr8k", data_root() / args.baseline, [], False),
           "flickr": (f"synthetic-{args.images}-flickr", "flickr8k", synthetic / "data" / "flickr", [], True),
           "coco": (f"synthetic-{args.images}-coco", "coco", coco_root,
                    ["--split-from", str(coco_root / "dataset_coco.json")], True)}
    if args.catalog:
        for key in sets:
            name, fmt, root, extra, _ = how[key]
            print(f"{name}: {json.dumps(catalog_memory(fmt, root, extra[1:]))}", flush=True)
        return {}
    saved = work / "load.json"
    result = json.loads(saved.read_text()) if saved.is_file() else {}
    result["synthetic"] = made
    for key in sets:
        name, fmt, root, extra, kill = how[key]
        wanted = [s for s in stages if not (key == "flickr" and s == "features")]
        measured = run_set(name, fmt, root, extra, work, kill, args.samples_per_shard, wanted)
        result[key] = {**result.get(key, {}), **measured, "name": name}
        print(f"{name}: {json.dumps(measured)}", flush=True)
    result["data_disk_mib"] = disk_mib(synthetic / "data")
    result["ratios"] = ratios(result)
    saved.write_text(json.dumps(result, indent=1))
    print_table(result)
    return result


def ratios(result: dict) -> dict:
    """Each large run's figures over the baseline's, stage by stage."""
    keys = ("peak_tree_pss_mib", "peak_driver_rss_mib", "peak_driver_own_mib")
    found = {}
    for key in ("flickr", "coco"):
        for stage_name, large in result.get(key, {}).items():
            base = result.get("baseline", {}).get(stage_name)
            if not isinstance(large, dict) or base is None:
                continue
            found[f"{key}/{stage_name}"] = {
                "images": round(large["images"]["input"] / base["images"]["input"], 2),
                "seconds": round(large["seconds"] / base["seconds"], 2),
                **{k.removesuffix("_mib"): round(large[k] / base[k], 2) for k in keys if base.get(k)}}
    return found


def print_table(result: dict) -> None:
    print("| stage | set | images in | wall s (tries) | img/s | peak tree PSS MiB | peak driver RSS MiB | "
          "driver's own MiB (store pages) | disk MiB | written + rejected = input |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key in SETS:
        run = result.get(key, {})
        for stage_name in ("shards", "features"):
            if stage_name not in run:
                continue
            r, c = run[stage_name], run[stage_name]["images"]
            tries = " + ".join(f"{t['seconds']}" + (" killed" if t.get("killed") else "") for t in r["tries"])
            print(f"| {stage_name} | {run['name']} | {c['input']:,} | {r['seconds']:,} ({tries}) | "
                  f"{r['images_per_s']:,} | {r['peak_tree_pss_mib']:,} | {r['peak_driver_rss_mib']:,} | "
                  f"{r.get('peak_driver_own_mib', '?')} ({r.get('peak_driver_object_store_mib', '?')}) | "
                  f"{r['disk_mib']:,} | {c['written']:,} + {c['rejected']:,} = {c['input']:,} "
                  f"({'ok' if r['accounted'] else 'BROKEN'}) |")
    print(f"ratios large/baseline: {json.dumps(result['ratios'])}")


if __name__ == "__main__":
    main()
