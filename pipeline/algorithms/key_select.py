"""The exact k-th smallest of keys spread over many parts, without gathering the keys.

A key is a row of unsigned words, compared word by word (most significant first). The search
fixes 16 bits at a time: every part counts its keys that match the bits fixed so far by the
value of the next 16 bits (a histogram of 65,536 counts), the sums say in which value the k-th
key lies, and the next round looks only there. Once few enough keys are left they are
gathered and sorted. Only histograms and at most ``gather_limit`` keys ever reach the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

DIGIT_BITS = 16
GATHER_LIMIT = 1 << 16


@dataclass(frozen=True)
class Prefix:
    """The words fixed so far and the top ``bits`` of the next word (``value``)."""

    words: tuple[int, ...] = ()
    bits: int = 0
    value: int = 0


def matching(keys: np.ndarray, prefix: Prefix, word_bits: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the keys (n x words, uint64) that start with ``prefix``."""
    ok = np.ones(len(keys), dtype=bool)
    for i, w in enumerate(prefix.words):
        ok &= keys[:, i] == np.uint64(w)
    if prefix.bits:
        col = len(prefix.words)
        shift = np.uint64(word_bits[col] - prefix.bits)
        ok &= (keys[:, col] >> shift) == np.uint64(prefix.value)
    return ok


def histogram(keys: np.ndarray, prefix: Prefix, word_bits: tuple[int, ...]) -> np.ndarray:
    """Counts of the next 16-bit digit among the keys that match ``prefix``."""
    sel = keys[matching(keys, prefix, word_bits)]
    col = len(prefix.words)
    shift = np.uint64(word_bits[col] - prefix.bits - DIGIT_BITS)
    digits = ((sel[:, col] >> shift) & np.uint64(0xFFFF)).astype(np.int64)
    return np.bincount(digits, minlength=1 << DIGIT_BITS).astype(np.int64)


def kth_key(rank: int, total: int, word_bits: tuple[int, ...],
            histograms: Callable[[Prefix], Iterable[np.ndarray]],
            candidates: Callable[[Prefix], Iterable[np.ndarray]],
            gather_limit: int = GATHER_LIMIT) -> tuple[int, ...]:
    """The ``rank``-th smallest key (1-based) of ``total`` keys, as a tuple of words.

    ``histograms(prefix)`` yields each part's histogram for that prefix; ``candidates(prefix)``
    yields each part's keys matching it. Every word's width must be a multiple of 16 bits.
    """
    if not 1 <= rank <= total:
        raise ValueError(f"rank {rank} is outside 1..{total}")
    prefix, left, count = Prefix(), rank, total
    while count > gather_limit and len(prefix.words) < len(word_bits):
        hist = np.zeros(1 << DIGIT_BITS, dtype=np.int64)
        for h in histograms(prefix):
            hist += h
        cum = np.cumsum(hist)
        digit = int(np.searchsorted(cum, left))  # first digit whose running count reaches left
        left -= int(cum[digit - 1]) if digit else 0
        count = int(hist[digit])
        value = (prefix.value << DIGIT_BITS) | digit
        bits = prefix.bits + DIGIT_BITS
        if bits == word_bits[len(prefix.words)]:
            prefix = Prefix((*prefix.words, value))
        else:
            prefix = Prefix(prefix.words, bits, value)
    if len(prefix.words) == len(word_bits):
        return prefix.words
    keys = np.concatenate([c for c in candidates(prefix)] or
                          [np.empty((0, len(word_bits)), dtype=np.uint64)])
    order = np.lexsort(keys.T[::-1])
    return tuple(int(w) for w in keys[order[left - 1]])


def at_most(keys: np.ndarray, cut: tuple[int, ...]) -> np.ndarray:
    """Boolean mask of the keys that are lexicographically <= ``cut``."""
    less = np.zeros(len(keys), dtype=bool)
    equal = np.ones(len(keys), dtype=bool)
    for i, w in enumerate(cut):
        col = keys[:, i]
        less |= equal & (col < np.uint64(w))
        equal &= col == np.uint64(w)
    return less | equal


def descending_float_key(values: np.ndarray) -> np.ndarray:
    """uint64 keys (in the low 32 bits) that sort float32 values largest first; -0.0 and
    0.0 get the same key, as they compare equal."""
    v = np.asarray(values, dtype=np.float32) + np.float32(0.0)  # -0.0 + 0.0 is +0.0
    bits = v.view(np.uint32)
    ascending = np.where(bits >> np.uint32(31), ~bits, bits | np.uint32(0x80000000))
    return (~ascending).astype(np.uint64)
