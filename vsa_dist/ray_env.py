"""Connecting to Ray the same way locally and on a cluster."""

from __future__ import annotations


def ensure_ray(progress: bool = True):
    """The running Ray, or a local one.

    Under ``ray job submit`` (or with RAY_ADDRESS set) ``ray.init()`` joins that cluster; otherwise it
    starts a local single-node Ray sized to this machine.
    """
    import ray

    if not ray.is_initialized():
        ray.init()
    ray.data.DataContext.get_current().enable_progress_bars = progress
    return ray
