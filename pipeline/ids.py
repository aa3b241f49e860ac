"""Sample identity (SPEC section 5): keys and 128-bit uids.

A uid is 32 lowercase hex digits. It comes from the sample's json ``uid`` when present, else
from the first 32 hex digits of sha256(shard name + key). For sorting and for DataComp's
``subset.npy`` a uid is split into its high and low 64 bits.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline import uid_hashing

UID_HEX_DIGITS = 32
SUBSET_DTYPE = np.dtype("u8,u8")

_HEX_VALUE = np.full(256, 255, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUE[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VALUE[_c] = 10 + _i


def derive_uid(shard: str, key: str) -> str:
    """The uid of a sample whose metadata carries none."""
    return hashlib.sha256(f"{shard}{key}".encode()).hexdigest()[:UID_HEX_DIGITS]


def derive_u128(shards: Iterable[str] | pa.Array, keys: Iterable[str] | pa.Array,
                apart: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The (high, low) halves of derive_uid for many samples at once (none of them null).

    The messages are joined by Arrow from the metadata's own columns (no Python string per
    shard and key) and each is hashed from a slice of their one buffer; the hex strings are
    skipped (``u128_to_uids`` gives them back, vectorised). With ``apart`` a helper process
    hashes (``uid_hashing``): a call holds the GIL, and the read step's threads hash beside
    each other's arithmetic.
    """
    joined = pc.binary_join_element_wise(_as_strings(shards), _as_strings(keys), "")
    if joined.null_count:
        raise ValueError("derive_u128 needs a shard name and a key for every sample")
    joined = joined.cast(pa.binary())
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int32)[
        joined.offset : joined.offset + len(joined) + 1].astype(np.int64).tobytes()
    data = joined.buffers()[2]
    text = memoryview(data) if data is not None else memoryview(b"")
    blob = (uid_hashing.hashed_apart if apart else uid_hashing.digests)(offsets, text)
    whole = np.frombuffer(blob, dtype=">u8").reshape(-1, 4)  # 32-byte digests
    return whole[:, 0].astype(np.uint64), whole[:, 1].astype(np.uint64)


def _as_strings(values: Iterable[str] | pa.Array) -> pa.Array:
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if isinstance(values, pa.Array):
        return values.cast(pa.string())
    return pa.array(list(values), pa.string())


def is_valid_uid(uid: object) -> bool:
    if not isinstance(uid, str) or len(uid) != UID_HEX_DIGITS:
        return False
    try:
        int(uid, 16)
    except ValueError:
        return False
    return True


def uids_to_u128(uids: Sequence[str | None] | pa.Array
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split uid strings (a list, or an Arrow array of strings) into (high, low) uint64
    halves, vectorised.

    Returns ``(hi, lo, ok)`` where ``ok`` is False for entries that are not 32 hex digits;
    their halves are 0.
    """
    n = len(uids)
    arr = _as_strings(uids).cast(pa.binary())
    lengths = pc.binary_length(arr).fill_null(0).to_numpy(zero_copy_only=False)
    ok = lengths == UID_HEX_DIGITS
    digits = np.zeros((n, UID_HEX_DIGITS), dtype=np.uint8)
    if ok.any():
        good = pc.filter(arr, pa.array(ok))  # every value is 32 bytes, stored back to back
        offsets = np.frombuffer(good.buffers()[1], dtype=np.int32)[good.offset:]
        raw = np.frombuffer(good.buffers()[2], dtype=np.uint8)[
            offsets[0] : offsets[0] + UID_HEX_DIGITS * len(good)]
        digits[ok] = _HEX_VALUE[raw.reshape(-1, UID_HEX_DIGITS)]
    ok &= (digits != 255).all(axis=1)
    digits[~ok] = 0
    shifts = np.arange(60, -1, -4, dtype=np.uint64)
    wide = digits.astype(np.uint64)
    hi = (wide[:, :16] << shifts).sum(axis=1, dtype=np.uint64)
    lo = (wide[:, 16:] << shifts).sum(axis=1, dtype=np.uint64)
    return hi, lo, ok


def u128_to_uids(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """Lowercase 32-hex-digit strings of (high, low) halves, vectorised (numpy ``S32``)."""
    buf = np.empty((len(hi), 2), dtype=">u8")
    buf[:, 0] = hi
    buf[:, 1] = lo
    return np.frombuffer(buf.tobytes().hex().encode(), dtype="S32")


def subset_array(hi: np.ndarray, lo: np.ndarray) -> np.ndarray:
    """DataComp's subset format: structured ``u8,u8`` (high, low), sorted."""
    order = np.lexsort((lo, hi))
    out = np.empty(len(hi), dtype=SUBSET_DTYPE)
    out["f0"] = hi[order]
    out["f1"] = lo[order]
    return out
