"""Our RoIAlign and batched NMS give torchvision's numbers, and captioning an image no longer imports torchvision."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torchvision.ops import batched_nms as tv_batched_nms
from torchvision.ops import roi_align as tv_roi_align

from vsa_dist.models.boxes import batched_nms, roi_align
from vsa_dist.models.regions import roi_mean_weights


def random_boxes(count: int, width: float, height: float, generator: torch.Generator) -> torch.Tensor:
    # corners a little outside the map too: RoIAlign's rules for points beyond the edge are part of the contract
    x = torch.rand(count, 2, generator=generator) * (width * 1.2) - width * 0.1
    y = torch.rand(count, 2, generator=generator) * (height * 1.2) - height * 0.1
    return torch.stack([x.min(1).values, y.min(1).values, x.max(1).values, y.max(1).values], dim=1)


@pytest.mark.parametrize("output_size,spatial_scale", [(2, 7 / 224), (7, 0.25), (224, 1.0)])
def test_roi_align_equals_torchvision(output_size, spatial_scale):
    generator = torch.Generator().manual_seed(output_size)
    height, width = (7, 7) if spatial_scale < 0.1 else (31, 45)
    features = torch.randn(3, 5, height, width, generator=generator)
    boxes = random_boxes(24, width / spatial_scale, height / spatial_scale, generator)
    rois = torch.cat([torch.randint(0, 3, (24, 1), generator=generator).float(), boxes], dim=1)
    ours = roi_align(features, rois, output_size, spatial_scale, sampling_ratio=2)
    theirs = tv_roi_align(features, rois, output_size, spatial_scale, sampling_ratio=2, aligned=True)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)  # float32 sums in another order


def test_pooled_weights_are_roi_align_then_mean():
    generator = torch.Generator().manual_seed(0)
    fmap = torch.randn(1, 6, 7, 7, generator=generator)
    rois = torch.cat([torch.zeros(30, 1), random_boxes(30, 224, 224, generator)], dim=1)
    pooled = roi_mean_weights(rois, 7, 7, 2, 7 / 224) @ fmap.flatten(2)[0].T
    expected = tv_roi_align(fmap, rois, 2, 7 / 224, sampling_ratio=2, aligned=True).mean(dim=(2, 3))
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7])
def test_batched_nms_equals_torchvision(threshold):
    generator = torch.Generator().manual_seed(int(threshold * 10))
    boxes = random_boxes(300, 100, 80, generator)
    boxes[:, 2:] += 1  # no empty box: IoU of two empty boxes is 0/0 in both
    scores = torch.rand(300, generator=generator)
    groups = torch.randint(0, 4, (300,), generator=generator)
    assert torch.equal(batched_nms(boxes, scores, groups, threshold), tv_batched_nms(boxes, scores, groups, threshold))


def test_captioning_path_does_not_import_torchvision():
    # torchvision loads its model zoo and torch._dynamo on import: 1.3 s of `vsa caption`'s start-up
    code = ("import sys, vsa_dist.features.extract, vsa_dist.serving, vsa_dist.stages.caption\n"
            "print('torchvision' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
