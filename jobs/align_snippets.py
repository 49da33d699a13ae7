"""Align sentence snippets to image regions (the paper's MRF, exact DP) over a feature folder, with Ray Data.

Locally:
    python jobs/align_snippets.py --checkpoint runs/flickr8k/align/best.pt --features runs/flickr8k/features \
        --out runs/flickr8k/snippets
On a Ray cluster:
    ray job submit --working-dir . --runtime-env cluster/runtime_env.yaml -- \
        python jobs/align_snippets.py --checkpoint s3://B/runs/align/best.pt --features s3://B/runs/features \
            --out s3://B/runs/snippets
"""

from vsa_dist.stages.align_snippets import main

if __name__ == "__main__":
    main()
