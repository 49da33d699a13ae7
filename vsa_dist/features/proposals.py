"""Region proposals: candidate boxes (x1, y1, x2, y2) in image pixels, ranked later by the CNN.

The paper used the top 19 detections of an RCNN detector. Without detector weights we keep RCNN's recipe
minus the detector: class-agnostic proposals (selective search, or a fixed multi-scale grid), scored by
the pretrained ImageNet classifier's confidence on each box, non-maximum suppression, top 19.
"""

from __future__ import annotations

import cv2
import numpy as np

from vsa_dist.features import PROPOSAL_METHODS  # noqa: F401  (its readers import it from here too)

# Window sizes (fraction of the image side) and how many positions per axis: 9 + 9 + 16 = 34 candidates.
_GRID = ((0.75, 3), (0.5, 3), (0.35, 4))


def grid_boxes(width: int, height: int) -> np.ndarray:
    """A fixed multi-scale sliding-window grid: no proposal cost, and the fallback for few proposals."""
    boxes = []
    for frac, steps in _GRID:
        w, h = width * frac, height * frac
        for iy in range(steps):
            for ix in range(steps):
                x1 = (width - w) * ix / (steps - 1)
                y1 = (height - h) * iy / (steps - 1)
                boxes.append((x1, y1, x1 + w, y1 + h))
    return np.asarray(boxes, dtype=np.float32)


def selective_search(image_rgb: np.ndarray, max_boxes: int = 200, min_side_frac: float = 0.1,
                     max_side: int = 500) -> np.ndarray:
    """Selective search (fast mode, opencv-contrib), small boxes dropped, first ``max_boxes`` kept.

    Large images are searched at ``max_side`` pixels and the boxes scaled back: the cost grows with area.
    """
    cv2.setNumThreads(1)  # one image per call; parallelism comes from running several calls at once
    height, width = image_rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    work = image_rgb if scale == 1.0 else cv2.resize(image_rgb, (round(width * scale), round(height * scale)))
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(work, cv2.COLOR_RGB2BGR))
    search.switchToSelectiveSearchFast()
    rects = search.process()  # (x, y, w, h), roughly from coarse to fine
    if len(rects) == 0:
        return np.zeros((0, 4), np.float32)
    rects = rects.astype(np.float32) / scale
    keep = (rects[:, 2] >= min_side_frac * width) & (rects[:, 3] >= min_side_frac * height)
    rects = rects[keep][:max_boxes]
    return np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)


def propose(image_rgb: np.ndarray, method: str, max_boxes: int = 200) -> np.ndarray:
    height, width = image_rgb.shape[:2]
    if method == "grid":
        return grid_boxes(width, height)
    if method == "selective-search":
        return selective_search(image_rgb, max_boxes)
    raise ValueError(f"unknown proposal method {method!r}; one of {PROPOSAL_METHODS}")
