"""Whole-image + top-R region features from one backbone. Imports only torch.

Both modes rank the same candidates the same way: every candidate box is RoIAligned on the final
feature map of one CNN pass, scored by the pretrained classifier's top-class confidence, suppressed
by NMS, and the best R kept (RCNN's recipe without its detector).

``roi``: the kept boxes' RoIAligned features are the region features (1 CNN pass per image).
``crop``: each kept box is cropped from the original image, resized to the input size and passed
through the CNN on its own, as RCNN did (1 + R passes per image).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F

from vsa_dist.models import REGION_MODES
from vsa_dist.models.backbone import Backbone, fold_batchnorm
from vsa_dist.models.boxes import batched_nms, roi_align, roi_align_weights
from vsa_dist.models.encoder import ImageTrunk


def select_top(boxes: torch.Tensor, scores: torch.Tensor, image_index: torch.Tensor, num_images: int, k: int,
               iou: float) -> list[torch.Tensor]:
    """Per image: indices of the top-k boxes after NMS; suppressed boxes refill a short list, best first."""
    keep = batched_nms(boxes, scores, image_index, iou)
    chosen = []
    for b in range(num_images):
        kept = keep[image_index[keep] == b]
        if kept.numel() < k:
            rest = torch.nonzero(image_index == b).flatten()
            rest = rest[~torch.isin(rest, kept)]
            rest = rest[scores[rest].argsort(descending=True)]
            kept = torch.cat([kept, rest])
        if kept.numel() < k:  # fewer candidates than regions at all: repeat the best ones
            kept = kept[torch.arange(k, device=kept.device) % max(kept.numel(), 1)]
        chosen.append(kept[:k])
    return chosen


def roi_mean_weights(rois: torch.Tensor, height: int, width: int, roi_size: int, spatial_scale: float) -> torch.Tensor:
    """[K, height*width]: how RoIAlign-then-average weighs each feature-map cell, per box.

    RoIAlign and the mean over its bins are linear in the feature map, so the pooled feature of box k is
    ``weights[k] @ fmap_cells``; with a fixed sampling grid RoIAlign is separable, so the mean over the bins is
    the outer product of the mean row weights and the mean column weights.
    """
    rows, cols = roi_align_weights(rois, height, width, roi_size, spatial_scale, sampling_ratio=2)
    return (rows.mean(dim=1)[:, :, None] * cols.mean(dim=1)[:, None, :]).flatten(1)


class RegionFeatureExtractor(torch.nn.Module):
    def __init__(self, backbone: Backbone, mode: str = "roi", num_regions: int = 19, nms_iou: float = 0.5,
                 roi_size: int = 2, crop_batch: int = 20, channels_last: bool = True, precision: str = "fp32"):
        super().__init__()
        if mode not in REGION_MODES:
            raise ValueError(f"region mode {mode!r} not in {REGION_MODES}")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision {precision!r} not in ('fp32', 'bf16')")
        self.backbone, self.mode, self.num_regions = backbone, mode, num_regions
        self.nms_iou, self.roi_size, self.crop_batch = nms_iou, roi_size, crop_batch
        self.channels_last, self.precision = channels_last, precision
        backbone.trunk = fold_batchnorm(backbone.trunk)  # inference only: BatchNorm is a fixed affine map
        if channels_last:  # the weights too: a channels_last input into NCHW weights converts back every layer
            backbone.to(memory_format=torch.channels_last)

    def precision_context(self, device: torch.device | str):
        """bf16 autocast (or nothing). Hold one open around many calls: autocast caches the bf16 copy of
        the weights only until its outermost context exits, and re-casting them costs as much as a
        small batch."""
        device_type = torch.device(device).type
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.precision == "bf16" else nullcontext()

    def _embed(self, images: torch.Tensor) -> torch.Tensor:
        """[B,3,S,S] in 0..255 (uint8 or float) → feature map [B,D,h,w] (float32)."""
        x = self.backbone.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with self.precision_context(x.device):
            return self.backbone.feature_map(x).float()

    def _resize(self, image: torch.Tensor, size: int) -> torch.Tensor:
        if image.shape[1:] == (size, size):
            return image
        return F.interpolate(image[None].float(), size=(size, size), mode="bilinear", antialias=True,
                             align_corners=False)[0]

    def _batch(self, images: list[torch.Tensor], size: int, device: torch.device) -> torch.Tensor:
        """[B,3,S,S] input batch, still in 0..255. Images already at the input size (the usual case) are
        stacked as uint8 [B,S,S,3] pixels, which *is* the channels_last layout of [B,3,S,S]: no float copy
        and no layout conversion before normalising (they cost 0.5 ms an image, ~4 % of the CNN, on a CPU)."""
        if self.channels_last and all(img.shape[1:] == (size, size) for img in images):
            return torch.stack([img.permute(1, 2, 0) for img in images]).to(device).permute(0, 3, 1, 2)
        return torch.stack([self._resize(img.to(device), size).float() for img in images])

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor], candidates: list[torch.Tensor]):
        """images: uint8 [3,H,W] each (any size); candidates: float [K_b,4] boxes in that image's pixels.

        Returns boxes [B,R,4] (image pixels), scores [B,R], features [B,1+R,D] float16 (row 0: whole image).
        """
        size = self.backbone.spec.input_size
        device = self.backbone.mean.device
        batch = self._batch(images, size, device)
        # per image (sx, sy, sx, sy): original pixels → input-size pixels
        scale = torch.tensor([[size / img.shape[2], size / img.shape[1]] * 2 for img in images], device=device)

        fmap = self._embed(batch)
        num_images, dim, height, width = fmap.shape
        whole = fmap.mean(dim=(2, 3))
        image_index = torch.cat([torch.full((len(c),), b, dtype=torch.long) for b, c in enumerate(candidates)]).to(
            device
        )
        boxes_orig = torch.cat([c.float() for c in candidates]).to(device)
        boxes_in = boxes_orig * scale[image_index]
        rois = torch.cat([image_index[:, None].float(), boxes_in], dim=1)
        weights = roi_mean_weights(rois, height, width, self.roi_size, width / size)
        # One GEMM for all boxes of all images: each box's weights sit in its own image's block of cells.
        block = torch.zeros(len(rois), num_images, height * width, device=device)
        block[torch.arange(len(rois), device=device), image_index] = weights
        cells = fmap.flatten(2).transpose(1, 2).reshape(num_images * height * width, dim)
        pooled = block.view(len(rois), -1) @ cells
        with self.precision_context(device):
            scores = self.backbone.classify(pooled).float().softmax(dim=-1).amax(dim=-1)
        chosen = torch.stack(select_top(boxes_in, scores, image_index, num_images, self.num_regions, self.nms_iou))

        flat = chosen.flatten()
        if self.mode == "roi":
            region = pooled[flat]
        else:
            crops = torch.cat([
                roi_align(images[b][None].to(device).float(),
                          torch.cat([torch.zeros(self.num_regions, 1, device=device), boxes_orig[chosen[b]]], dim=1),
                          output_size=size, spatial_scale=1.0, sampling_ratio=2)
                for b in range(num_images)])
            region = torch.cat([self._embed(crops[i:i + self.crop_batch]).mean(dim=(2, 3))
                                for i in range(0, len(crops), self.crop_batch)])
        features = torch.cat([whole[:, None], region.view(num_images, self.num_regions, -1)], dim=1)
        boxes_out = boxes_orig[flat].view(num_images, self.num_regions, 4)
        return boxes_out.cpu(), scores[flat].view(num_images, -1).cpu(), features.to(torch.float16).cpu()


class TrunkFeatureExtractor(RegionFeatureExtractor):
    """The activation entering block ``trunk_block`` of an EfficientNet-lite, per image: what an alignment model that
    trains the blocks above it (``encoder=cached``) reads instead of a vector. Same call as the region extractor;
    no regions (boxes [B, 0, 4]), features [B, C, h, w] float16."""

    def __init__(self, backbone: Backbone, trunk_block: int, channels_last: bool = True, precision: str = "fp32"):
        if not hasattr(backbone.trunk, "net") or not 1 <= trunk_block < len(backbone.trunk.net._blocks):
            blocks = len(backbone.trunk.net._blocks) if hasattr(backbone.trunk, "net") else 0
            raise ValueError(f"trunk block {trunk_block}: {backbone.spec.name} has no such block to cache the input "
                             f"of (an EfficientNet-lite's blocks 1 to {blocks - 1})")
        backbone.trunk = ImageTrunk(backbone.trunk.net, trunk_block)
        super().__init__(backbone, "roi", 0, channels_last=channels_last, precision=precision)

    @torch.inference_mode()
    def forward(self, images: list[torch.Tensor], candidates: list[torch.Tensor]):
        size = self.backbone.spec.input_size
        maps = self._embed(self._batch(images, size, self.backbone.mean.device))
        return torch.zeros(len(images), 0, 4), torch.zeros(len(images), 0), maps.to(torch.float16).contiguous().cpu()
