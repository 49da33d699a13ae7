"""How well people agree with each other on a split: each image's first reference sentence scored,
with the same metrics as the generator, against its other four (leave one out).

    python scripts/human_agreement.py --features runs/flickr8k/features --split test

A ceiling of sorts for the generator's numbers (which are scored against all five references, so they
are not strictly comparable: more references raise BLEU).
"""

from __future__ import annotations

import argparse
import json

from vsa_dist.data.pairs import load_split
from vsa_dist.eval.captions import leave_one_out_human


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--features", default="runs/flickr8k/features")
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    split = load_split(args.features, args.split, {}, 1, whole_image_only=True)
    references = dict(zip(split["image_ids"], split["references"]))
    print(json.dumps({"split": args.split, "images": len(references), **leave_one_out_human(references)}, indent=1))


if __name__ == "__main__":
    main()
