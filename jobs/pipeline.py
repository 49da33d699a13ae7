"""The whole pipeline on one machine (the local debug mode).

    python jobs/pipeline.py                          # flickr8k-mini → runs/mini/
    python jobs/pipeline.py --data ../shared/data/flickr8k --run-dir runs/flickr8k
"""

from vsa_dist.stages.pipeline import main

if __name__ == "__main__":
    main()
