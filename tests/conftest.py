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
