"""vsa-dist: Deep Visual-Semantic Alignments (Karpathy & Fei-Fei, CVPR 2015), rebuilt on Ray and MLflow."""

__version__ = "0.1.0"
