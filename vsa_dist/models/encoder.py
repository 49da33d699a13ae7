"""An image encoder that trains with the alignment model: an EfficientNet-lite whose blocks from ``trunk_block`` on (and
its head conv) run inside the model. Imports only torch and the EfficientNet-lite code.

Fine-tuning the CNN's last blocks is what lifts retrieval past what a frozen CNN allows (docs/alignment.md measures
it), but on a CPU a pass of the whole CNN forward and backward over the train images costs minutes. The blocks below
``trunk_block`` therefore run once, in ``vsa features --trunk-block N``: that feature folder holds each image's
activation entering block N (for lite0 at 224 px and N = 12, 192 × 7 × 7), and the model runs the rest,

    trunk map [B, C, h, w] → blocks N … last → head conv, BatchNorm, swish → global mean → [B, D],

the vector that a frozen CNN's feature folder holds as each image's first row. The model holds the whole network (its
lower blocks are the pretrained ones, never trained): its checkpoint is the encoder a search index, ``vsa eval`` and the
served scorer embed images with.

At ``trunk_block`` 0 nothing is cached (``encoder=full``): the model takes the images themselves, uint8 [B, 3, S, S],
and runs the whole network, stem included: the path a GPU trains, from image shards.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn

from vsa_dist.models.args import TRAINABLE_BACKBONES

# their input normalisation, on the 0..255 scale: (x - 127) / 128 for every lite model (models/backbone.py's specs
# read it from here)
LITE_MEAN, LITE_STD = 127.0, 128.0


class ImageTrunk(nn.Module):
    """The network's stem and blocks below ``upto`` (1 or more): what ``vsa features --trunk-block`` runs once per
    image."""

    def __init__(self, net: nn.Module, upto: int):
        super().__init__()
        self.net, self.upto = net, upto

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        net = self.net
        x = net._swish(net._bn0(net._conv_stem(x)))
        for block in net._blocks[:self.upto]:
            x = block(x)
        return x


class ImageEncoder(nn.Module):
    """``top(trunk maps)`` → [B, D] image vectors, the blocks from ``trunk_block`` on trained with the model.

    At ``trunk_block`` 0, ``top`` takes the images (0..255 pixels [B, 3, S, S], uint8 or float) and runs the stem too.

    ``freeze_below(k)``: blocks below k take no gradient (nor do the ones below ``trunk_block``, which never run here,
    and the ImageNet classifier, which is not used); the stem trains only with k = 0 at trunk block 0. ``batchnorm``:
    "frozen" keeps the pretrained statistics and affine maps fixed in training (each worker's batch is small: its
    statistics would be noisy), "train" updates them. ``bf16``: run the blocks under bfloat16 autocast, where the
    hardware runs it natively (bf16 keeps fp32's range: no loss scaler, on a GPU either). ``channels_last``: the
    convolutions' fast memory layout on CPUs and tensor-core GPUs."""

    def __init__(self, backbone: str, trunk_block: int):
        super().__init__()
        if backbone not in TRAINABLE_BACKBONES:
            raise ValueError(f"backbone {backbone!r} cannot train with the model: use one of {TRAINABLE_BACKBONES}")
        self.net = EfficientNet.from_name(backbone, num_classes=1000)
        if not 0 <= trunk_block <= len(self.net._blocks):
            raise ValueError(f"trunk block {trunk_block}: {backbone} has blocks 0 to {len(self.net._blocks) - 1}")
        self.backbone, self.trunk_block = backbone, trunk_block
        self.batchnorm, self.bf16, self.channels_last = "frozen", False, False
        self.freeze_below(trunk_block)

    def freeze_below(self, block: int) -> None:
        """Train blocks ``max(block, trunk_block)`` … last and the head conv; nothing else takes a gradient."""
        first = max(block, self.trunk_block)
        self.net.requires_grad_(False)
        stem = [self.net._conv_stem, self.net._bn0] if first == 0 else []
        for module in [*stem, *self.net._blocks[first:], self.net._conv_head, self.net._bn1]:
            module.requires_grad_(True)

    def train(self, mode: bool = True) -> ImageEncoder:
        super().train(mode)
        if mode and self.batchnorm == "frozen":
            for module in self.net.modules():
                if isinstance(module, nn.BatchNorm2d):
                    module.eval()
        return self

    def top(self, maps: torch.Tensor) -> torch.Tensor:
        """Trunk maps [B, C, h, w] (any float dtype), or at trunk block 0 images → image vectors [B, D] (float32)."""
        net = self.net
        # no stochastic depth (the network's drop_connect): the probe that measured this lever ran without it
        context = torch.autocast(maps.device.type, dtype=torch.bfloat16) if self.bf16 else nullcontext()
        x = maps.to(torch.float32)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with context:
            if self.trunk_block == 0:
                x = net._swish(net._bn0(net._conv_stem((x - LITE_MEAN) / LITE_STD)))
            for block in net._blocks[self.trunk_block:]:
                x = block(x)
            x = net._swish(net._bn1(net._conv_head(x)))
        return x.float().mean(dim=(2, 3))


@torch.no_grad()
def trunk_shape(backbone: str, trunk_block: int, input_size: int) -> tuple[int, ...]:
    """[C, h, w] of the trunk maps entering ``trunk_block`` of ``backbone`` at ``input_size`` pixels."""
    net = EfficientNet.from_name(backbone, num_classes=1000).eval()
    return tuple(ImageTrunk(net, trunk_block)(torch.zeros(1, 3, input_size, input_size)).shape[1:])
