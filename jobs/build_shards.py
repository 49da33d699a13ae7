"""Build WebDataset shards from a caption dataset.

Locally:
    python jobs/build_shards.py --format flickr8k --root ../shared/data/flickr8k --out runs/flickr8k/shards
On a Ray cluster:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/build_shards.py --format flickr8k --root DATA --out OUT
"""

from vsa_dist.stages.shards import main

if __name__ == "__main__":
    main()
