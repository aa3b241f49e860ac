"""What a worker sends back when a task fails in a way no retry can fix."""

from __future__ import annotations

import errno
import pickle

import pytest

from pipeline.engines.task_errors import TaskError, TaskFailure, plain, result_of, run_task
from pipeline.errors import ConceptpruneError


def fails_with(err: Exception) -> None:
    raise err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.ENOENT, errno.EROFS])
def test_final_os_errors_come_back_as_themselves(code: int) -> None:
    got = run_task(fails_with, OSError(code, "it failed", "/data/x"))
    assert isinstance(got, TaskFailure)
    with pytest.raises(OSError) as caught:
        result_of(pickle.loads(pickle.dumps(got)))  # as an engine carries it
    assert (caught.value.errno, caught.value.filename) == (code, "/data/x")
    assert caught.value.strerror.startswith("it failed (on worker ")


def test_user_errors_come_back_and_anything_else_is_raised_for_the_engine() -> None:
    got = run_task(fails_with, ConceptpruneError("lower dbp.k"))
    with pytest.raises(TaskError, match="^lower dbp.k$"):
        result_of(got)
    for retriable in (OSError(errno.EIO, "flaky"), ValueError("a bug"), ConnectionError()):
        with pytest.raises(type(retriable)):
            run_task(fails_with, retriable)
    assert run_task(len, [1, 2]) == result_of(2) == 2


def test_colour_codes_are_removed() -> None:
    assert plain("\x1b[36mray::_Worker.run()\x1b[39m failed") == "ray::_Worker.run() failed"
