"""How fast ``vsa search`` answers once its index is built: one run, the ratio of a query to the index's build.

    python benchmarks/search.py --shards runs/flickr8k/shards --model runs/flickr8k/align-modern/best.pt \
        --splits test --queries 20

In one process: the index of the shards' images is built from scratch (the CNN and the model's region vectors of
every image, in a scratch copy of the shard folder, so nothing of the user's is touched), then ``--queries``
sentences of those images are searched against it (each the sentence's embedding and the scores of all images); and
the whole command (``python -m vsa_dist.cli search``, a fresh process: imports, the model, the index read) is timed
once. Prints and writes (``--out``) JSON: seconds for each, and the query's share of the build.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from vsa_dist.stages.search import build_index, load_searcher  # noqa: E402


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True)
    parser.add_argument("--model", required=True, help="best.pt, a model folder or an MLflow URI")
    parser.add_argument("--splits", default="test", help="comma-separated")
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    splits = args.splits.split(",")
    with tempfile.TemporaryDirectory(prefix="vsa-search-bench-") as scratch:
        shards = Path(scratch) / "shards"
        shutil.copytree(args.shards, shards, ignore=shutil.ignore_patterns(".vsa-index"))
        started = time.perf_counter()
        searcher = load_searcher(args.model)
        loaded = time.perf_counter()
        index = build_index(searcher, shards, splits, 32, progress=False)
        built = time.perf_counter()
        sentences = [said[0] for said in index.sentences[:args.queries]]
        seconds = []
        for sentence in sentences:
            start = time.perf_counter()
            searcher.image_scores(index.vectors, sentence)
            seconds.append(time.perf_counter() - start)
        command = [sys.executable, "-m", "vsa_dist.cli", "search", sentences[0], str(shards), "--splits", args.splits,
                   "--model", args.model, "--top", "5"]
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=REPO, capture_output=True)
        whole = time.perf_counter() - start
    result = {"images": len(index.names), "model_load_s": round(loaded - started, 2),
              "index_build_s": round(built - loaded, 2), "query_median_s": round(statistics.median(seconds), 4),
              "query_max_s": round(max(seconds), 4), "command_s": round(whole, 2),
              "query_share_of_build": round(statistics.median(seconds) / (built - loaded), 5)}
    print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
