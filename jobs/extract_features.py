"""Extract whole-image + top-19 region CNN features from image shards (Ray Data).

Locally:
    python jobs/extract_features.py --shards runs/flickr8k/shards --out runs/flickr8k/features
On a Ray cluster:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/extract_features.py --shards SHARDS --out FEATURES
"""

from vsa_dist.stages.features import main

if __name__ == "__main__":
    main()
