"""Output folders replaced whole: a run never leaves a mix of its files and older ones."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.workdir import staged_dir


def test_staged_dir_replaces_the_folder_whole(tmp_path: Path) -> None:
    final = tmp_path / "shards"
    final.mkdir()
    for name in ("00000.tar", "00001.tar", "00002.tar"):
        (final / name).write_text("old")
    with staged_dir(final) as staging:
        assert staging.parent == tmp_path and not list(staging.iterdir())
        (staging / "00000.tar").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["00000.tar"]
    assert (final / "00000.tar").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_an_error_leaves_the_old_folder_and_no_staging(tmp_path: Path) -> None:
    final = tmp_path / "shards"
    final.mkdir()
    (final / "00000.tar").write_text("old")
    with pytest.raises(RuntimeError), staged_dir(final) as staging:
        (staging / "00000.tar").write_text("half")
        raise RuntimeError("killed")
    assert [p.read_text() for p in final.iterdir()] == ["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]


def test_what_a_killed_run_left_is_cleared(tmp_path: Path) -> None:
    (tmp_path / ".shards.staging-99999").mkdir()
    (tmp_path / ".shards.staging-99999" / "00000.tar").write_text("half")
    with staged_dir(tmp_path / "shards") as staging:
        (staging / "00000.tar").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shards"]
