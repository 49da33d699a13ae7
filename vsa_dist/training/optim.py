"""Optimisers and learning-rate schedules (a function of the epoch alone, so that a resumed run needs no state)."""

from __future__ import annotations

import math

import torch


def make_optimizer(kind: str, params, lr: float, momentum: float, weight_decay: float):
    """``params``: parameters, or groups of them (dicts; a group may set its own ``weight_decay``, an ``lr_scale`` of
    the scheduled rate and ``still_epochs``: epochs it does not move, see ``set_lr``)."""
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if kind == "rmsprop":
        return torch.optim.RMSprop(params, lr=lr, alpha=0.99, weight_decay=weight_decay)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"optimizer {kind!r} is not sgd, adam or rmsprop")


def configure_groups(optimizer: torch.optim.Optimizer, groups: list[dict], weight_decay: float) -> None:
    """Each group's settings as the config gives them now (a resumed optimizer's state brings back the ones it was
    saved with, and a run resumed with another ``--cnn-lr`` or ``--weight-decay`` means the new one)."""
    for group, wanted in zip(optimizer.param_groups, groups):
        group.update({"weight_decay": weight_decay, **{k: v for k, v in wanted.items() if k != "params"}})


def epoch_lr(lr: float, schedule: str, epoch: int, epochs: int) -> float:
    """The learning rate of an epoch (1-based); a function of the epoch alone, so a resumed run needs no state."""
    if schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - 1) / epochs))
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float, epoch: int) -> None:
    """Each group at ``lr`` times its ``lr_scale``, or at 0 in its first ``still_epochs`` epochs (a pretrained part
    held as it is while the new layers above it learn)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0) if epoch > group.get("still_epochs", 0) else 0.0
