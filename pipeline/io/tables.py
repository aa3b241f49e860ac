"""Small conversions between Arrow columns and numpy arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def numpy_column(table: pa.Table, name: str, fill: float | int | bool, dtype: str) -> np.ndarray:
    """Column ``name`` as a numpy array of ``dtype``, nulls replaced by ``fill``."""
    col = table.column(name)
    if col.null_count:
        col = col.fill_null(fill)
    return col.to_numpy().astype(dtype, copy=False)


def masked(values: np.ndarray, missing: np.ndarray, type_: pa.DataType) -> pa.Array:
    """An Arrow array with nulls where ``missing`` is True."""
    return pa.array(values, type=type_, mask=missing)
