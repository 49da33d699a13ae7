"""Train the MRNN caption generator with Ray Train (DDP), select on dev CIDEr, test once, register in MLflow.

Locally:
    python jobs/train_mrnn.py --features runs/flickr8k/features
    python jobs/train_mrnn.py --features runs/flickr8k/features --preset train_mrnn_modern
On a Ray cluster:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/train_mrnn.py --features FEATURES --out RUN_DIR --workers 4 --use-gpu true
"""

from vsa_dist.stages.train_mrnn import main

if __name__ == "__main__":
    main()
