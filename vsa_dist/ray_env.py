"""Connecting to Ray the same way locally and on a cluster, and refusing work the cluster can never place."""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import ray
import yaml
from ray._private import worker as ray_worker
from ray._private.ray_logging import global_worker_stdstream_dispatcher as dispatcher

from vsa_dist import console
from vsa_dist.errors import ConfigError

# Where the Ray cluster launcher (`ray up`) leaves the autoscaler's config on the head node; elsewhere
# (KubeRay, a hand-started autoscaler) point VSA_AUTOSCALER_CONFIG at the config that lists the node types.
AUTOSCALER_CONFIG_ENV = "VSA_AUTOSCALER_CONFIG"
LAUNCHER_CONFIG = Path.home() / "ray_bootstrap_config.yaml"


class UnplaceableRequest(ConfigError):
    """Resources that no node of the cluster, present or addable by its autoscaler, can provide."""


def ensure_ray(progress: bool = True):
    """The running Ray, or a local one.

    Under ``ray job submit`` (or with RAY_ADDRESS set) ``ray.init()`` joins that cluster; otherwise it
    starts a local single-node Ray sized to this machine.
    """
    if not ray.is_initialized():
        ray.init()
        if started_local_ray():
            start_reaper()
    route_worker_output()
    # Ray Data draws a bar per operator; quiet, the stage draws its own one
    ray.data.DataContext.get_current().enable_progress_bars = progress and console.verbose()
    return ray


def route_worker_output() -> None:
    """Ray prints every worker's stdout and stderr on the driver, and the raylet's warnings ("N worker processes have
    been started…"); while a command logs to a file, all of it goes there and only the lines a worker marked for the
    terminal (``console.SAY_MARK``) are printed (with ``--verbose``, Ray's printer shows them all as well)."""
    dispatcher.remove_handler("vsa")
    if not console.logging_to_file():
        return
    if not console.verbose() and ray_worker.print_to_stdstream is not _to_log:
        original = ray_worker.print_to_stdstream
        dispatcher.remove_handler("ray_print_logs")
        # the raylet's messages reach the driver by another path, which calls this module-level function
        ray_worker.print_to_stdstream = _to_log

        def undo() -> None:  # once the command ends, Ray prints as it did (a test process runs many commands)
            ray_worker.print_to_stdstream = original
            dispatcher.remove_handler("vsa")
            dispatcher.add_handler("ray_print_logs", functools.partial(original, ignore_prefix=False))

        console.on_exit(undo)
    dispatcher.add_handler("vsa", console.worker_lines)
    console.on_exit(lambda: dispatcher.remove_handler("vsa"))


def _to_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    console.worker_lines(data)


def started_local_ray() -> bool:
    """Whether this process started the Ray it uses (its raylet is our child), rather than joining a cluster."""
    return any(child.name() == "raylet" for child in psutil.Process().children())


def start_reaper() -> None:
    """A watchdog that kills what this local Ray leaves behind if this driver dies without shutting it down
    (``vsa_dist.reaper``); in its own session, so that a signal to our process group does not take it along."""
    subprocess.Popen([sys.executable, "-m", "vsa_dist.reaper", str(os.getpid())], start_new_session=True,
                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def autoscaler_node_types() -> dict[str, dict[str, float]] | None:
    """Node type → resources of the nodes the autoscaler may add, or None when the cluster does not autoscale."""
    path = os.environ.get(AUTOSCALER_CONFIG_ENV) or (str(LAUNCHER_CONFIG) if LAUNCHER_CONFIG.is_file() else "")
    if not path:
        return None
    if not Path(path).is_file():
        raise UnplaceableRequest(f"{AUTOSCALER_CONFIG_ENV}={path}: no such autoscaler config")
    config = yaml.safe_load(Path(path).read_text()) or {}
    return {name: {k: float(v) for k, v in (spec.get("resources") or {}).items()}
            for name, spec in (config.get("available_node_types") or {}).items()
            if spec.get("max_workers", 1) > 0 or name == config.get("head_node_type")}


def _fits(request: dict[str, float], node: dict[str, float]) -> int:
    """How many copies of ``request`` one node of these resources holds."""
    wanted = {k: v for k, v in request.items() if v > 0}
    if not wanted:
        return 1 << 30
    return int(min(node.get(k, 0.0) // v for k, v in wanted.items()))


def check_placeable(request: dict[str, float], count: int, what: str) -> None:
    """Fail fast, before any work, when ``count`` bundles of ``request`` can never run on this cluster.

    Without an autoscaler the live nodes must hold them all (Ray would otherwise wait forever); with
    one, each bundle must fit some node type it can add (it adds as many as the demand needs).
    """
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    node_types = autoscaler_node_types()
    if node_types is not None:
        shapes = nodes + list(node_types.values())
        if not any(_fits(request, shape) for shape in shapes):
            raise UnplaceableRequest(
                f"{what} asks {request} per worker, but no node of this cluster and no node type its autoscaler "
                f"can add has that much (node types: {node_types})")
        return
    capacity = sum(_fits(request, shape) for shape in nodes)
    if capacity < count:
        have = {k: sum(n.get(k, 0.0) for n in nodes) for k in request}
        raise UnplaceableRequest(
            f"{what} asks for {count} × {request}, but this cluster ({len(nodes)} node(s), {have} in all, no "
            f"autoscaler found: set {AUTOSCALER_CONFIG_ENV} if it has one) can place only {capacity}")


def worker_request(use_gpu: bool, threads: int) -> dict[str, Any]:
    """One Ray Train worker's resources, as the stages ask for them."""
    return {"CPU": 1.0, "GPU": 1.0} if use_gpu else {"CPU": float(threads)}
