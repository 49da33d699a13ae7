"""The import graph: no cycle, no stage imported by another (the pipeline, which composes them, aside), imports at
the top of their files (the few deliberate late ones say why), the model, data, feature and evaluation layers free of
Ray and MLflow, which stay at the edge (stages, recipes, serving, tracking), and every command's config free of
torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "vsa_dist"
PURE_LAYERS = ("models", "data", "features", "eval")
COMPOSER = "vsa_dist.stages.pipeline"  # shards → features → alignment → generator → report, in one command


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


def loaded_by(modules: list[str]) -> set[str]:
    """The heavy packages that importing ``modules`` really loads, in a fresh interpreter."""
    code = f"import importlib, json, sys\nfor n in {modules!r}: importlib.import_module(n)\n" \
           "print(json.dumps([m for m in ('torch', 'ray', 'mlflow', 'webdataset') if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    return set(json.loads(out))


def test_no_module_imports_itself_back():
    graph = imports()
    ours = {name: {d for d in deps if d in graph} for name, deps in graph.items()}
    cycles = sorted(name for name in ours if name in reachable(ours, name))
    assert not cycles, f"modules on an import cycle: {cycles}"


def test_stages_are_not_libraries():
    graph = imports()
    for name, deps in graph.items():
        if name == COMPOSER:
            continue
        stages = sorted(d for d in deps if d.startswith("vsa_dist.stages.") and d in graph)
        assert not stages, f"{name} imports the stage runner(s) {stages}"


def test_imports_stand_at_the_top_of_their_file_or_say_why_not():
    late = []
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and "# lazy: " not in lines[node.lineno - 1]:
                    late.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert not late, f"imports inside functions without a '# lazy: why' comment: {late}"


def test_data_does_not_import_features():
    """The layers run one way: features read data's shards, data knows nothing of features."""
    graph = imports()
    back = sorted((name, dep) for name, deps in graph.items() if name.startswith("vsa_dist.data")
                  for dep in deps if dep.startswith("vsa_dist.features"))
    assert not back, back


def test_model_data_feature_and_eval_layers_need_neither_ray_nor_mlflow():
    graph = imports()
    for name in graph:
        if name.split(".")[1:2] and name.split(".")[1] in PURE_LAYERS:
            heavy = {"ray", "mlflow"} & reachable(graph, name)
            assert not heavy, f"{name} reaches {heavy}"
    # and for real: importing every module of those layers loads neither
    names = [n for n in graph if n.split(".")[1:2] and n.split(".")[1] in PURE_LAYERS]
    assert not {"ray", "mlflow"} & loaded_by(names)


def test_every_commands_config_and_the_cli_load_neither_torch_nor_ray_nor_mlflow():
    """``vsa COMMAND --help`` is built from these alone: a quarter of a second, not the seconds torch takes."""
    assert loaded_by(["vsa_dist.cli", "vsa_dist.configs", "vsa_dist.recipes.config"]) == set()


def test_a_model_is_looked_up_before_torch_loads():
    """``vsa caption`` and ``vsa models`` ask the registry with MLflow alone: a missing model is one line without the
    seconds torch takes to import (issue: 9.8 s to say a model is not registered)."""
    assert loaded_by(["vsa_dist.registry", "vsa_dist.stages.caption", "vsa_dist.stages.models"]) == {"mlflow"}
