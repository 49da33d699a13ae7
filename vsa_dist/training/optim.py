"""Optimisers and learning-rate schedules (a function of the epoch alone, so that a resumed run needs no state)."""

from __future__ import annotations

import math

import torch


def make_optimizer(kind: str, model: torch.nn.Module, lr: float, momentum: float, weight_decay: float):
    if kind == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    if kind == "rmsprop":
        return torch.optim.RMSprop(model.parameters(), lr=lr, alpha=0.99, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer {kind!r} is not sgd, adam or rmsprop")


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch (1-based); a function of the epoch alone, so a resumed run needs no state."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
