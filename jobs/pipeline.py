"""The whole pipeline: shards → features → alignment → generator, each tested and registered in MLflow.

Locally (the single-node debug mode):
    python jobs/pipeline.py                          # flickr8k-mini → runs/mini/
    python jobs/pipeline.py --data ../shared/data/flickr8k --run-dir runs/flickr8k
On a Ray cluster (docs/cluster.md), data and outputs on shared storage:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/pipeline.py --data s3://BUCKET/flickr8k --run-dir s3://BUCKET/runs/flickr8k
"""

from vsa_dist.stages.pipeline import main

if __name__ == "__main__":
    main()
