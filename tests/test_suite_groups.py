"""make test's xdist groups (tests/conftest.py): a test that starts Ray or Spark and ran
beside another such test would share the 2 cores and the ports with it."""

from __future__ import annotations

import ast
import re
from pathlib import Path

from conftest import test_group as group_of

TESTS = Path(__file__).parent
# what starts a cluster in a test's own code: an engine object, a head started apart, a
# standalone cluster, a run or CLI call that names the engine
STARTS = re.compile(r"RayEngine\(|SparkEngine\(|ray_head\(|spark_cluster|standalone\(|"
                    r"\"name\": \"(ray|spark)\"|--engine\W+(ray|spark)|ray\.init\(")


def cluster_tests() -> list[str]:
    """Node ids of the test functions whose own code starts Ray or Spark."""
    found = []
    for path in sorted(TESTS.glob("test_*.py")):
        source = path.read_text()
        for node in ast.parse(source).body:
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_") and \
                    STARTS.search(ast.get_source_segment(source, node) or ""):
                found.append(f"tests/{path.name}::{node.name}")
    return found


def test_every_test_that_starts_a_cluster_is_in_the_clusters_group() -> None:
    found = cluster_tests()
    # the ones outside the engine modules too (a kill chain on a Ray head, the hostile corpus)
    assert {"tests/test_crash_resume.py", "tests/test_hostile_corpus.py"} <= \
        {nodeid.split("::")[0] for nodeid in found}
    outside = [nodeid for nodeid in found if group_of(nodeid) != "clusters"]
    assert not outside, f"tests that start Ray or Spark outside the clusters group: {outside}"


def test_other_tests_stay_with_their_module() -> None:
    assert group_of("tests/test_evaluate.py::test_the_arms_hold_what_they_say") == \
        "tests/test_evaluate.py"
    assert group_of("tests/test_exact.py::test_x[array-3]") == "tests/test_exact.py"
    assert group_of("tests/test_engine_spark.py::test_gpu_tasks_ask_for_a_gpu[2]") == \
        "clusters"
    assert group_of("tests/test_crash_resume.py::test_a_ray_run_killed_at_every_map") == \
        "clusters"
    # a word, not a substring: "array" and "spray" start nothing
    assert group_of("tests/test_x.py::test_an_array_and_a_spray") == "tests/test_x.py"
