"""The import graph: no cycle, no stage imported by another (the pipeline and tune aside), and the model, data,
feature and evaluation layers free of Ray and MLflow, which stay at the edge (stages, serving, tracking)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vsa_dist"
PURE_LAYERS = ("models", "data", "features", "eval")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """Module → every module it imports anywhere in its body (at the top or inside a function): ours by full name,
    others by their top-level package."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            for target in targets:
                found.add(target if target in modules else target.split(".")[0])
        graph[name] = found - {name}
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in graph.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_no_module_imports_itself_back():
    graph = imports()
    ours = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
    cycles = sorted(name for name in ours if name in reachable(ours, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_stages_are_not_libraries():
    graph = imports()
    for name, deps in graph.items():
        # the pipeline runs the stages, tune runs the training stages' loops: both drive stages by design
        if name in ("vsa_dist.stages.pipeline", "vsa_dist.stages.tune", "vsa_dist.cli") or \
                not name.startswith("vsa_dist."):
            continue
        stages = sorted(d for d in deps if d.startswith("vsa_dist.stages.") and d in graph)
        assert not stages, f"{name} imports the stage runner(s) {stages}"


def test_model_data_feature_and_eval_layers_need_neither_ray_nor_mlflow():
    graph = imports()
    for name in graph:
        if name.split(".")[1:2] and name.split(".")[1] in PURE_LAYERS:
            heavy = {"ray", "mlflow"} & reachable(graph, name)
            assert not heavy, f"{name} reaches {heavy}"
    # and for real: importing every module of those layers loads neither
    names = [n for n in graph if n.split(".")[1:2] and n.split(".")[1] in PURE_LAYERS]
    code = f"import importlib, sys\nfor n in {names!r}: importlib.import_module(n)\n" \
           "print(sorted(m for m in ('ray', 'mlflow') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out
