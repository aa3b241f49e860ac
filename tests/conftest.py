"""Fixtures shared by several test modules."""

from __future__ import annotations

from pathlib import Path

import pytest
from tie_data import planted_ties


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
