"""Collectives the training loops share, in public torch.distributed calls only (gloo and NCCL alike)."""

from __future__ import annotations

import torch
import torch.distributed as dist


class _GatherRows(torch.autograd.Function):
    """Every worker's rows, concatenated in rank order. Backward: each worker's loss reached every worker's rows,
    so a row's gradient is the sum over workers (all_reduce) of which its owner keeps its own slice — a
    reduce-scatter made of calls every backend has (gloo has no reduce_scatter). torch's own
    ``torch.distributed.nn.functional.all_gather`` does the same but is deprecated for a private successor."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows, ctx.rank = len(tensor), dist.get_rank()
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


def gather_across_workers(*tensors: torch.Tensor) -> tuple[list[torch.Tensor], int]:
    """All workers' tensors concatenated (gradients flow back to each owner), and this worker's row offset.
    Every worker has the same batch size: the train split is divided equally and batches drop the remainder."""
    return [_GatherRows.apply(t) for t in tensors], dist.get_rank() * len(tensors[0])
