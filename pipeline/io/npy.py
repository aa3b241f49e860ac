"""Reading ``.npy``/``.npz`` files from several threads at once, safely.

``np.load`` reads an array's header with ``ast.literal_eval``. On CPython 3.11 (this project's
Python) the AST constructor keeps its recursion depth in one interpreter-wide counter, so two
threads parsing at the same time can fail with ``SystemError: AST constructor recursion depth
mismatch`` (python/cpython#106905, fixed only in later Pythons). The local engine maps units on
threads, and a CI run failed this way once. Every array read in the pipeline goes through this
module, which parses headers under one lock; the bytes of a large array are read outside it.
"""

from __future__ import annotations

import io
import threading
from os import PathLike

import numpy as np

_HEADER_LOCK = threading.Lock()


def load(path: str | PathLike[str], *, mmap: bool = False) -> np.ndarray:
    """The array in the local ``.npy`` file ``path``: mapped read-only when ``mmap``, else
    read into memory (for small files: the whole read happens under the lock)."""
    with _HEADER_LOCK:
        return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def load_bytes(data: bytes) -> np.ndarray:
    """The array in a ``.npy`` file's ``data``, read elsewhere (remote storage) without the
    lock, so that slow downloads on several threads still overlap."""
    with _HEADER_LOCK:
        return np.load(io.BytesIO(data), allow_pickle=False)


def npz_member(data: bytes, key: str) -> np.ndarray | None:
    """Array ``key`` of the ``.npz`` archive ``data``, or None when the archive lacks it
    (``ValueError``/``OSError`` for bytes that are no such archive)."""
    with _HEADER_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return archive[key] if key in archive.files else None


def npz_keys(data: bytes) -> list[str]:
    """The array names in the ``.npz`` archive ``data``."""
    with _HEADER_LOCK, np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return list(archive.files)
