"""Kill a worker node of a real multi-node Ray cluster while a stage runs (run by tests/integration/test_cluster.py).

    python tests/node_loss.py align    RESULT.json -- vsa train-align arguments…
    python tests/node_loss.py features RESULT.json -- vsa features arguments…

A ``ray.cluster_utils.Cluster`` on this machine: a head with no CPUs (so work lands on the workers), two
1-CPU worker nodes and a spare added before the kill. The stage's ``main`` runs in a thread, because
adding and removing nodes installs signal handlers and must happen in the main thread. The node is
removed once the stage is demonstrably mid-way: for training, when Ray Train's controller has registered the
first checkpoint (listed in OUT/ray's checkpoint_manager_snapshot.json; the checkpoint's directory appears
earlier, while the report is still on its way to the controller, and a node lost in that window rightly
restarts from scratch); for features, when the CNN actors have run for a few seconds. RESULT.json says what was
seen: when the node went, whether the stage was still running then, and the stage's return value.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def registered_checkpoints(out: Path) -> int:
    count = 0
    for snapshot in (out / "ray").glob("*/checkpoint_manager_snapshot.json"):
        try:
            count += len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (OSError, ValueError, KeyError):  # being rewritten by the controller: look again shortly
            pass
    return count


def cpus_in_use() -> float:
    import ray

    return ray.cluster_resources().get("CPU", 0.0) - ray.available_resources().get("CPU", 0.0)


def main() -> None:
    stage, result_path, args = sys.argv[1], Path(sys.argv[2]), sys.argv[4:]
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0})
    try:
        lose_a_node_while(cluster, stage, result_path, args)
    finally:  # no Ray of this test outlives it
        ray.shutdown()
        cluster.shutdown()


def lose_a_node_while(cluster, stage: str, result_path: Path, args: list[str]) -> None:
    import ray

    from vsa_dist.stages import features, train_align

    workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
    ray.init(address=cluster.address, log_to_driver=True)
    cluster.wait_for_nodes()

    outcome: dict = {}

    def run_stage() -> None:
        try:
            outcome["result"] = (train_align.main if stage == "align" else features.main)(args)
        except BaseException as err:  # noqa: BLE001 - reported to the test, which fails on it
            outcome["error"] = repr(err)

    thread = threading.Thread(target=run_stage, daemon=True)
    thread.start()
    out = Path(args[args.index("--out") + 1])
    deadline = time.time() + 300
    if stage == "align":
        while registered_checkpoints(out) < 1 and thread.is_alive() and time.time() < deadline:
            time.sleep(0.2)
    else:
        while cpus_in_use() < 2 and thread.is_alive() and time.time() < deadline:  # both CNN actors placed
            time.sleep(0.5)
        time.sleep(5)  # the actors are working through their first blocks
    killed_while_running = thread.is_alive()
    killed_at_ms = int(time.time() * 1000)
    cluster.add_node(num_cpus=1)  # somewhere for the restarted workers to go
    cluster.remove_node(workers[0])
    print(f"node_loss: removed a worker node (stage still running: {killed_while_running})", flush=True)
    thread.join(timeout=600)
    result = {"killed_while_running": killed_while_running, "killed_at_ms": killed_at_ms,
              "finished": not thread.is_alive(), **outcome}
    result_path.write_text(json.dumps(result, default=str))


if __name__ == "__main__":
    main()
