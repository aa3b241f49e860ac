"""Matrix products in full float32 in torch, whatever precision was asked for before.

torch may run float32 products as TF32 or bf16 passes on a GPU (``allow_tf32``,
``set_float32_matmul_precision``), with about three decimal digits. The exact k-means and
SemDeDup re-checks bound the proposers' error by float32's, and the tensor path's resampling
rounds to 8-bit levels: both need true float32 products.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


@contextlib.contextmanager
def full_float32(torch: Any) -> Iterator[None]:  # noqa: ANN401 - the torch module
    """Matrix products in full float32 (no TF32, no bf16 passes), put back afterwards."""
    before = (torch.get_float32_matmul_precision(), torch.backends.cuda.matmul.allow_tf32)
    torch.set_float32_matmul_precision("highest")
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(before[0])
        torch.backends.cuda.matmul.allow_tf32 = before[1]
