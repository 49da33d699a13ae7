"""Search a training stage's settings on dev with Ray Tune (ASHA); the best written as a preset file.

Locally:
    python jobs/tune.py --stage align --features runs/flickr8k/features --trials 8
On a Ray cluster (each trial a Ray Train run of 2 workers):
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/tune.py --stage align --features FEATURES --out TUNE_DIR --workers 2 --trials 32
"""

from vsa_dist.stages.tune import main

if __name__ == "__main__":
    main()
