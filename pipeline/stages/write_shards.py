"""The write step of the image path: kept samples copied into new shards (SPEC §7).

Input shards are read again in order and every sample whose ledger row says ``kept`` is
copied member by member, byte for byte, so input order is preserved within a shard.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.io.shard_writer import ShardWriter, WrittenShard
from pipeline.io.shards import ShardStream


def kept_keys(ledger_part: Path) -> set[str]:
    table = pq.read_table(ledger_part, columns=["key", "status"])
    return set(table.filter(pc.equal(table["status"], "kept"))["key"].to_pylist())


def write_kept(shards: list[str], ledger_parts: list[Path], out_dir: Path, max_count: int,
               max_bytes: int, progress: Callable[[int], None] | None = None
               ) -> list[WrittenShard]:
    """Copy the kept samples of ``shards`` (ledger part i describes shard i) to ``out_dir``."""
    with ShardWriter(out_dir, max_count=max_count, max_bytes=max_bytes) as writer:
        for url, part in zip(shards, ledger_parts, strict=True):
            keep = kept_keys(part)
            if not keep:
                continue
            for sample in ShardStream(url):
                if sample.key in keep:
                    writer.write_sample(sample)
                    if progress is not None:
                        progress(1)
        return writer.close()
