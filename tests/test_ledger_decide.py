"""The ledger's per-sample decision: the first step that removed a sample owns it, with its
reason; a failed sample is no step's; the strings come out as the codes say."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from pipeline.stages.ledger import STATUSES, _pair_counts, decide


def test_the_first_step_that_removed_a_sample_owns_it_with_its_reason() -> None:
    failed = np.array([True, False, False, False, False, False])
    sem = np.array([True, True, False, False, True, False])
    clip = np.array([False, True, True, False, False, False])
    dbp = np.array([True, True, True, True, True, False])
    per_sample = pa.array(["d0", "d1", "d2", "too dense", None, "d5"], pa.string())
    status, stage, reason = decide(failed, [("semdedup", sem, "near-duplicate"),
                                            ("clip_filter", clip, "low clip score"),
                                            ("dbp", dbp, per_sample)], "dbp")
    assert [STATUSES[s] for s in status] == ["failed", "removed", "removed", "removed",
                                             "removed", "kept"]
    # a failed row's stage and reason come from the ingest table later: here the defaults
    assert stage.to_pylist() == ["dbp", "semdedup", "clip_filter", "dbp", "semdedup", "dbp"]
    assert reason.to_pylist() == [None, "near-duplicate", "low clip score", "too dense",
                                  "near-duplicate", None]
    assert stage.type == reason.type == pa.string()


def test_no_steps_and_no_rows() -> None:
    status, stage, reason = decide(np.array([False, True]), [], "read")
    assert [STATUSES[s] for s in status] == ["kept", "failed"]
    assert stage.to_pylist() == ["read", "read"] and reason.to_pylist() == [None, None]
    status, stage, reason = decide(np.zeros(0, dtype=bool), [("dbp", np.zeros(0, bool),
                                                              "x")], "dbp")
    assert len(status) == len(stage) == len(reason) == 0


def test_pair_counts_over_chunks_and_nulls() -> None:
    a = pa.chunked_array([["s0", None, "s1", "s0"], ["s0", None]])
    b = pa.chunked_array([["kept", "failed", "kept", "removed"], ["kept", "failed"]])
    assert _pair_counts(a, b) == {("s0", "kept"): 2, ("s0", "removed"): 1,
                                  (None, "failed"): 2, ("s1", "kept"): 1}
    empty = pa.chunked_array([], pa.string())
    assert _pair_counts(empty, empty) == {}
