"""Sample identity: derived uids, 128-bit halves, DataComp's subset format (SPEC 5, 7)."""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from same_bytes import assert_same_bytes

from pipeline import uid_hashing
from pipeline.ids import derive_u128, derive_uid, subset_array, u128_to_uids, uids_to_u128


def test_derive_uid_known_vectors() -> None:
    # sha256("") and sha256("abc") are the standard test vectors
    assert derive_uid("", "") == "e3b0c44298fc1c149afbf4c8996fb924"
    assert derive_uid("a", "bc") == "ba7816bf8f01cfea414140de5dae2223"
    assert derive_uid("ab", "c") == derive_uid("a", "bc")  # plain concatenation, no separator


def test_derive_uid_is_sha256_prefix_of_shard_plus_key() -> None:
    shard, key = "s3://bucket/laion/00042.tar", "000420017"
    uid = derive_uid(shard, key)
    assert uid == hashlib.sha256((shard + key).encode("utf-8")).hexdigest()[:32]
    assert len(uid) == 32 and uid == uid.lower()
    assert derive_uid("00000.tar", "000000001") != derive_uid("00001.tar", "000000001")


@pytest.mark.parametrize("apart", [False, True])
def test_derive_u128_matches_derive_uid(apart: bool) -> None:
    """Hashed here, or by a helper process (``apart``): the same halves."""
    shards = ["a.tar", "b.tar", "ü.tar", ""]
    keys = ["1", "2", "clé", ""]
    hi, lo = derive_u128(shards, keys, apart=apart)
    assert hi.dtype == np.uint64 and lo.dtype == np.uint64
    assert u128_to_uids(hi, lo).tolist() == [derive_uid(s, k).encode()
                                             for s, k in zip(shards, keys, strict=True)]
    assert int(hi[3]) == 0xE3B0C44298FC1C14 and int(lo[3]) == 0x9AFBF4C8996FB924
    hi0, lo0 = derive_u128([], [], apart=apart)
    assert len(hi0) == len(lo0) == 0


def test_hashing_helpers_serve_callers_at_once_and_a_dead_one_is_replaced_by_local_hashing(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Helpers are as many as callers at once, each answers with hashlib's digests, and
    when one has died the callers hash in their own process, with the same digests."""
    monkeypatch.setattr(uid_hashing, "_IDLE", [])
    monkeypatch.setattr(uid_hashing, "_STARTED", [])
    monkeypatch.setattr(uid_hashing, "_UNAVAILABLE", [])
    messages = [f"shard-{i}.tar{i * 7919}".encode() for i in range(5000)] + [b"", "é".encode()]
    offsets = np.concatenate([[0], np.cumsum([len(m) for m in messages])]).astype(np.int64)
    want = b"".join(hashlib.sha256(m).digest() for m in messages)
    with ThreadPoolExecutor(3) as pool:  # three callers hashing at once
        got = list(pool.map(lambda _: uid_hashing.hashed_apart(offsets.tobytes(),
                                                               b"".join(messages)), range(6)))
    assert len(got) == 6
    for answer in got:
        assert_same_bytes(answer, want, "a helper's digests")
    started = list(uid_hashing._STARTED)
    assert 1 <= len(started) <= 3 and len(uid_hashing._IDLE) == len(started)
    for helper in started:  # the helpers die (a stop signal to the process group)
        helper.process.kill()
        helper.process.wait()
    assert_same_bytes(uid_hashing.hashed_apart(offsets.tobytes(), b"".join(messages)), want,
                      "the digests after the helpers died")
    assert uid_hashing._UNAVAILABLE and len(uid_hashing._STARTED) == len(started) - 1
    assert_same_bytes(uid_hashing.hashed_apart(offsets.tobytes(), b"".join(messages)), want,
                      "the digests hashed here")
    uid_hashing.close_helpers()
    assert all(h.process.poll() is not None for h in started)


def test_uids_to_u128_known_value() -> None:
    hi, lo, ok = uids_to_u128(["0123456789abcdeffedcba9876543210"])
    assert ok.tolist() == [True]
    assert hi.dtype == np.uint64 and lo.dtype == np.uint64
    assert int(hi[0]) == 0x0123456789ABCDEF and int(lo[0]) == 0xFEDCBA9876543210


def test_uids_to_u128_flags_bad_uids_and_keeps_positions() -> None:
    good = ["f" * 32, "0" * 31 + "1", "8" + "0" * 31]
    uids = ["g" * 32, good[0], None, "0" * 31, good[1], "0" * 33, "", "é" + "0" * 30,
            " " + "0" * 31, good[2], "0x" + "0" * 30]
    hi, lo, ok = uids_to_u128(uids)
    assert ok.tolist() == [False, True, False, False, True, False, False, False, False, True,
                           False]
    assert (hi[~ok] == 0).all() and (lo[~ok] == 0).all()
    assert [(int(h), int(low)) for h, low in zip(hi[ok], lo[ok], strict=True)] == [
        (2**64 - 1, 2**64 - 1), (0, 1), (2**63, 0)]


def test_uids_to_u128_accepts_uppercase_hex() -> None:
    hi, lo, ok = uids_to_u128(["ABCDEF0123456789abcdef0123456789"])
    assert ok.tolist() == [True]
    assert int(hi[0]) == 0xABCDEF0123456789 and int(lo[0]) == 0xABCDEF0123456789
    assert u128_to_uids(hi, lo).tolist() == [b"abcdef0123456789abcdef0123456789"]


def test_empty_inputs() -> None:
    hi, lo, ok = uids_to_u128([])
    assert len(hi) == len(lo) == len(ok) == 0
    assert u128_to_uids(hi, lo).dtype == np.dtype("S32")
    assert subset_array(hi, lo).dtype == np.dtype("u8,u8")


@settings(max_examples=50, deadline=None)
@given(st.lists(st.binary(min_size=16, max_size=16), max_size=40))
def test_uid_round_trip(raw: list[bytes]) -> None:
    uids = [b.hex() for b in raw]
    hi, lo, ok = uids_to_u128(uids)
    assert ok.all()
    assert [(int(h) << 64) | int(low) for h, low in zip(hi, lo, strict=True)] == [
        int(u, 16) for u in uids]
    back = u128_to_uids(hi, lo)
    assert back.dtype == np.dtype("S32")
    assert back.tolist() == [u.encode("ascii") for u in uids]


def test_subset_array_dtype_and_unsigned_order() -> None:
    hi = np.array([2**63, 5, 5, 0, 2**64 - 1], dtype=np.uint64)
    lo = np.array([0, 2**63 + 7, 3, 9, 0], dtype=np.uint64)
    out = subset_array(hi, lo)
    assert out.dtype == np.dtype("u8,u8")
    assert out.dtype.names == ("f0", "f1")
    assert [(int(a), int(b)) for a, b in out.tolist()] == [
        (0, 9), (5, 3), (5, 2**63 + 7), (2**63, 0), (2**64 - 1, 0)]


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1)), max_size=50))
def test_subset_array_is_sorted_by_high_then_low(pairs: list[tuple[int, int]]) -> None:
    hi = np.array([p[0] for p in pairs], dtype=np.uint64)
    lo = np.array([p[1] for p in pairs], dtype=np.uint64)
    out = subset_array(hi, lo)
    assert [(int(a), int(b)) for a, b in out.tolist()] == sorted(pairs)
    # the halves sort like the 128-bit uid, i.e. like its 32-hex-digit string
    uids = [f"{a:016x}{b:016x}" for a, b in pairs]
    assert u128_to_uids(out["f0"], out["f1"]).tolist() == [u.encode() for u in sorted(uids)]
