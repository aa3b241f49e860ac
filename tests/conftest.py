"""Fixtures shared by several test modules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tie_data import planted_ties

# `make test` runs pytest in two pytest-xdist workers (the Makefile's TEST_WORKERS). Each
# module's tests stay together on one worker, in their order: its module fixtures are built
# once, and a test that reads what the one before it left (test_evaluate's) finds it. Every
# test that starts Ray or Spark (a local cluster, a head and nodes, a standalone master and
# workers) joins one group, so no two clusters share the 2 cores and their ports while the
# other worker takes the rest. A plain `pytest` runs everything in order, as before. (The
# groups are the scheduler's own: pytest 9.2 ignores the node ids that xdist's `xdist_group`
# marker rewrites, so that marker groups nothing.)
CLUSTER_MODULES = {"test_engine_ray", "test_engine_spark"}


def test_group(nodeid: str) -> str:
    """The group a test runs in: "clusters" for those that start Ray or Spark, else its
    module (``tests/test_x.py``)."""
    module, _, name = nodeid.partition("::")
    words = name.split("::")[-1].split("[")[0].split("_")
    if Path(module).stem in CLUSTER_MODULES or "ray" in words or "spark" in words:
        return "clusters"
    return module


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under xdist, the cluster tests first (each module's order kept): theirs is the longest
    group, and a worker that took it last would end minutes after the other."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: test_group(item.nodeid) != "clusters")


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log):  # noqa: ANN001, ANN201
    """xdist's per-module scheduling with the groups of ``test_group``, in the order the
    workers collected them."""
    from xdist.scheduler import LoadScopeScheduling

    class ModulesAndClusters(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return test_group(nodeid)

    config.option.loadscopereorder = False
    return ModulesAndClusters(config, log)


@pytest.fixture(scope="session")
def tie_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The planted-tie embeddings input of ``tie_data`` (built once: three runs plan it),
    read by the engine, thread-count and backend tests. Read only: nobody writes into it."""
    return planted_ties(tmp_path_factory.mktemp("ties"))


@pytest.fixture(scope="session")
def tie_local(tie_input: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's run of ``tie_input`` with ``tie_data.settings``: the bytes every
    other engine's run of it must give."""
    from tie_data import settings

    from pipeline.config import validate_config
    from pipeline.runner import run

    out = tmp_path_factory.mktemp("tie-local") / "local"
    run(validate_config(settings(tie_input, out)))
    return out


@pytest.fixture(scope="session")
def chain_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """72 synthetic images in three shards: the input of the kill and signal chains (local,
    Ray and Spark; ``test_crash_resume.SAMPLES``). Read only."""
    from pipeline.synth.images import synth_images

    return synth_images(tmp_path_factory.mktemp("chain") / "data", 72, seed=9,
                        samples_per_shard=24, concepts=3)


@pytest.fixture(scope="session")
def chain_clean(chain_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The local engine's unbroken run of ``chain_images`` (``test_resume_images.raw_config``):
    the bytes every stopped and resumed chain must end with."""
    from test_resume_images import raw_config

    from pipeline.config import validate_config
    from pipeline.runner import run

    out = tmp_path_factory.mktemp("chainclean") / "out"
    run(validate_config(raw_config(chain_images, out)))
    return out
