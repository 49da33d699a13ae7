"""COCO-scale rehearsal: `vsa shards build` and `vsa features` on a synthetic set of 100k images, each stage killed
once mid-way and resumed, against the same commands on full Flickr8k.

    python benchmarks/load.py                      # 100,000 images (about 35 minutes on 2 cores, ~8 GB of disk)
    python benchmarks/load.py --stages shards      # rerun one stage (its shards folder stays for features)
    python benchmarks/load.py --catalog            # the shard builder's in-memory catalog, both sets
    python benchmarks/load.py --images 600 --baseline flickr8k-mini --samples-per-shard 50 --work /tmp/lb
                                                   # a quick rehearsal of the rehearsal (a few minutes)

The synthetic set is Flickr8k in its own format: every image re-encoded (JPEG quality 85-95, every other cycle
mirrored) under a new name, five captions each drawn from the token file, split train/dev/test 90/5/5 %.
Memory is the peak PSS of each command's whole process tree (driver, Ray and its workers) and the driver's
peak RSS, sampled every 0.5 s; "flat" means the 100k run's peak over the 8k run's. Time is wall time of the
whole command, start-up included, the killed try and the resumed one added up. Writes WORK/load.json
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
    """A Flickr8k-format folder of ``count`` re-encoded images with drawn captions (kept if already complete)."""
    done = out / "complete.json"
    if done.is_file() and json.loads(done.read_text())["images"] == count:
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
    lines = [f"{name}#{k}\t{rng.choice(sentences)}" for name in names for k in range(5)]
    (out / "Flickr8k.token.txt").write_text("\n".join(lines) + "\n")
    order = names[:]
    rng.shuffle(order)
    begin = 0
    for split, share in SPLIT_SHARES:
        end = count if split == SPLIT_SHARES[-1][0] else begin + round(share * count)
        (out / f"Flickr_8k.{split}Images.txt").write_text("\n".join(sorted(order[begin:end])) + "\n")
        begin = end
    info = {"images": count, "sentences": len(lines), "seconds": round(time.time() - start, 1)}
    done.write_text(json.dumps(info))
    return info


def catalog_memory(root: Path) -> dict:
    """What the shard builder's in-memory catalog of a Flickr-format set costs, in a fresh process (RSS growth)."""
    code = ("import json, sys, psutil; from pathlib import Path; from vsa_dist.data.sources import read_source; "
            "before = psutil.Process().memory_info().rss; c = read_source('flickr8k', Path(sys.argv[1])); "
            "print(json.dumps({'images': len(c.entries), 'sentences': c.input_sentences, "
            "'catalog_mib': round((psutil.Process().memory_info().rss - before) / 2**20)}))")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True)
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
            "peak_driver_rss_mib": max(t["peak_driver_rss_mib"] for t in tries),
            "images": counts, "rejects_listed": len([r for r in rejects if json.loads(r)["kind"] == "image"]),
            "accounted": counts["written"] + counts["rejected"] == counts["input"],
            "build": manifest["build"], "disk_mib": disk_mib(out)}


def run_set(name: str, root: Path, work: Path, kill: bool, samples_per_shard: int, stages: list[str]) -> dict:
    """The stages on one data set (features read the shards folder an earlier run of this set left)."""
    folders = {"shards": work / name / "shards", "features": work / name / "features"}
    logs = work / name / "logs"
    for key in stages:
        shutil.rmtree(folders[key], ignore_errors=True)
    logs.mkdir(parents=True, exist_ok=True)
    # each image's first caption ends its name with '#0': enough to plan when to kill
    planned = max(1, (root / "Flickr8k.token.txt").read_text().count("#0\t") // samples_per_shard)
    argv = {"shards": ["shards", "build", "--root", str(root), "--out", str(folders["shards"]),
                       "--samples-per-shard", str(samples_per_shard), "--progress", "false"],
            "features": ["features", "--shards", str(folders["shards"]), "--out", str(folders["features"]),
                         "--progress", "false"]}
    result = {}
    for key in stages:
        result[key] = stage(key, argv[key], folders[key], logs, kill_after_records=planned // 3 if kill else 0)
        result[key]["images_per_s"] = round(result[key]["images"]["input"] / result[key]["seconds"], 1)
    return result


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=100_000, help="synthetic images (COCO has 123k)")
    parser.add_argument("--work", default=str(runs_root() / "bench"), help="where the data, shards, features go")
    parser.add_argument("--samples-per-shard", type=int, default=500)
    parser.add_argument("--baseline", default="flickr8k", help="the data set the large run is compared with "
                        "(flickr8k-mini for a quick rehearsal)")
    parser.add_argument("--stages", default="shards,features", help="rerun only these (the others' last results "
                        "in WORK/load.json stay)")
    parser.add_argument("--sets", default="baseline,large", help="rerun only these sets: baseline, large")
    parser.add_argument("--catalog", action="store_true", help="only measure the shard builder's catalog memory")
    args = parser.parse_args(argv)
    if args.catalog:
        for root in (data_root() / args.baseline, Path(args.work) / f"synthetic-{args.images}" / "data"):
            print(f"{root}: {json.dumps(catalog_memory(root))}", flush=True)
        return {}
    work, stages, sets = Path(args.work), args.stages.split(","), args.sets.split(",")
    flickr = data_root() / "flickr8k"
    synthetic = work / f"synthetic-{args.images}"
    made = make_synthetic(flickr, synthetic / "data", args.images)
    print(f"synthetic set: {made}", flush=True)
    saved = work / "load.json"
    result = json.loads(saved.read_text()) if saved.is_file() else {}
    result["synthetic"] = made
    for key, name, root, kill in (("baseline", args.baseline, data_root() / args.baseline, False),
                                  ("large", f"synthetic-{args.images}", synthetic / "data", True)):
        if key in sets:
            measured = run_set(name, root, work, kill, args.samples_per_shard, stages)
            result[key] = {**result.get(key, {}), **measured, "name": name}
            print(f"{name}: {json.dumps(measured)}", flush=True)
    baseline, large = result["baseline"], result["large"]
    result["ratios"] = {
        stage: {
            "images": round(large[stage]["images"]["input"] / baseline[stage]["images"]["input"], 2),
            "seconds": round(large[stage]["seconds"] / baseline[stage]["seconds"], 2),
            "peak_tree_pss": round(large[stage]["peak_tree_pss_mib"] / baseline[stage]["peak_tree_pss_mib"], 2),
            "peak_driver_rss": round(large[stage]["peak_driver_rss_mib"] / baseline[stage]["peak_driver_rss_mib"], 2),
        }
        for stage in ("shards", "features")
    }
    result["data_disk_mib"] = disk_mib(synthetic / "data")
    saved.write_text(json.dumps(result, indent=1))
    print("| stage | set | images | wall s (tries) | img/s | peak tree PSS MiB | peak driver RSS MiB | disk MiB | "
          "written + rejected = input |")
    print("|---|---|---|---|---|---|---|---|---|")
    for run in (baseline, large):
        for stage in ("shards", "features"):
            r, c = run[stage], run[stage]["images"]
            tries = " + ".join(f"{t['seconds']}" + (" (killed)" if t.get("killed") else "") for t in r["tries"])
            print(f"| {stage} | {run['name']} | {c['input']} | {r['seconds']} ({tries}) | {r['images_per_s']} | "
                  f"{r['peak_tree_pss_mib']} | {r['peak_driver_rss_mib']} | {r['disk_mib']} | "
                  f"{c['written']} + {c['rejected']} = {c['input']} ({'ok' if r['accounted'] else 'BROKEN'}) |")
    print(f"ratios large/baseline: {json.dumps(result['ratios'])}")
    return result


if __name__ == "__main__":
    main()
