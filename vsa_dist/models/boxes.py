"""RoIAlign and batched NMS in plain torch. Imports only torch.

torchvision's ops do the same, but importing torchvision loads its whole model zoo and ``torch._dynamo``
(1.3 s of the 7 s `vsa caption` spent starting on the 2-core machine). These two are small: RoIAlign with a fixed
sampling grid is separable — each output bin is a row-weight vector times the feature map times a
column-weight vector — so it is two matrix products per box, and the boxes per image are few (34 grid
windows, at most 200 proposals). tests/unit/test_boxes.py holds both to torchvision's results.
"""

from __future__ import annotations

import torch


def _axis_weights(start: torch.Tensor, extent: torch.Tensor, bins: int, sampling: int, length: int) -> torch.Tensor:
    """[K, bins, length]: along one axis, the bilinear weight of each cell for each output bin, averaged over
    the bin's ``sampling`` sample points (RoIAlign's rules: a point beyond one cell outside the map adds
    nothing, one just outside is clamped to the edge)."""
    offsets = (torch.arange(bins, device=start.device)[:, None]
               + (torch.arange(sampling, device=start.device) + 0.5) / sampling)  # [bins, sampling], in bin units
    coords = start[:, None, None] + offsets[None] * (extent / bins)[:, None, None]  # [K, bins, sampling]
    inside = ((coords >= -1.0) & (coords <= length)).to(start.dtype)
    coords = coords.clamp(min=0)
    low = coords.floor()
    at_edge = low >= length - 1
    low = torch.where(at_edge, torch.full_like(low, length - 1), low)
    coords = torch.where(at_edge, low, coords)
    high = torch.where(at_edge, low, low + 1)
    frac = coords - low
    weights = torch.zeros(*coords.shape, length, dtype=start.dtype, device=start.device)
    weights.scatter_add_(-1, low.long()[..., None], ((1 - frac) * inside)[..., None])
    weights.scatter_add_(-1, high.long()[..., None], (frac * inside)[..., None])
    return weights.mean(dim=2)


def roi_align_weights(rois: torch.Tensor, height: int, width: int, output_size: int, spatial_scale: float,
                      sampling_ratio: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Row weights [K, out, height] and column weights [K, out, width] of ``roi_align(..., aligned=True)``
    for boxes ``rois`` [K, 5] (batch index, x1, y1, x2, y2 in input pixels)."""
    if sampling_ratio <= 0:
        raise ValueError("sampling_ratio must be positive (the adaptive grid is not separable per box)")
    box = rois[:, 1:].float() * spatial_scale - 0.5  # aligned=True: pixel centres sit at half-integers
    rows = _axis_weights(box[:, 1], box[:, 3] - box[:, 1], output_size, sampling_ratio, height)
    cols = _axis_weights(box[:, 0], box[:, 2] - box[:, 0], output_size, sampling_ratio, width)
    return rows, cols


def roi_align(features: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float = 1.0,
              sampling_ratio: int = 2) -> torch.Tensor:
    """torchvision's ``roi_align(features, rois, output_size, spatial_scale, sampling_ratio, aligned=True)``:
    features [B, C, H, W], rois [K, 5] → [K, C, output_size, output_size]."""
    rows, cols = roi_align_weights(rois, features.shape[2], features.shape[3], output_size, spatial_scale,
                                   sampling_ratio)
    maps = features.float()[rois[:, 0].long()]  # [K, C, H, W]
    return torch.einsum("kph,kchw,kqw->kcpq", rows, maps, cols)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N, M] intersection over union of (x1, y1, x2, y2) boxes."""
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    top_left = torch.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=2)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, groups: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """torchvision's ``batched_nms``: indices of the boxes greedy NMS keeps within each group, best score first.

    Greedy NMS keeps a box unless a kept box of its group with a higher score overlaps it by more than the
    threshold. Whether box i is kept depends only on the boxes before it, so iterating "keep every box no kept
    box before it suppresses" from "keep all" fixes one more box each round at least and stops at the greedy
    answer (its only fixed point); each round is one matrix reduction instead of a Python step per box.
    """
    order = scores.argsort(descending=True, stable=True)
    ranked, ranked_groups = boxes[order].float(), groups[order]
    suppresses = (box_iou(ranked, ranked) > iou_threshold) & (ranked_groups[:, None] == ranked_groups[None, :])
    suppresses = suppresses.triu(diagonal=1)  # [j, i]: j ranks above i
    keep = torch.ones(len(order), dtype=torch.bool, device=boxes.device)
    while True:
        new_keep = ~(suppresses & keep[:, None]).any(dim=0)
        if torch.equal(new_keep, keep):
            return order[keep]
        keep = new_keep
