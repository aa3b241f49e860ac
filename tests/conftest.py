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
