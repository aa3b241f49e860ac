"""Every YAML block of the README is a valid configuration (a fragment such as `engine:`
is checked inside a minimal run), so a user who copies one gets no error the README did not
warn of."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import ConfigError, validate_config

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```ya?ml\n(.*?)```", README.read_text(), re.S)
BASE = {"input": {"embeddings": "/data/embeddings"}, "output": "/data/out"}


def test_the_readme_has_yaml_blocks() -> None:
    assert len(BLOCKS) >= 4


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[0][:40] for b in BLOCKS])
def test_every_readme_yaml_block_validates(block: str) -> None:
    raw = yaml.safe_load(block)
    assert isinstance(raw, dict)
    settings = raw if "input" in raw else {**BASE, **raw}
    validate_config(settings)


def test_the_check_would_see_a_wrong_block() -> None:
    with pytest.raises(ConfigError):
        validate_config({**BASE, "semdedup": {"epsilon": 0.07}})
