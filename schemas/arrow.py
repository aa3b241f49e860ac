"""Arrow schemas of every per-sample table the pipeline writes (SPEC section 7).

Intermediate tables in the work folder are one file per input part and step, row-aligned with
that part's ingest table: row r of ``STEP/part-NNNNN.parquet`` describes the part's r-th sample.
"""

import pyarrow as pa

# Per input part: the identity of every sample read and whether its vectors are usable.
INGEST = pa.schema([
    pa.field("key", pa.string()),
    pa.field("uid", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("uid_hi", pa.uint64(), nullable=False),  # the uid's 128 bits, 0 where invalid
    pa.field("uid_lo", pa.uint64(), nullable=False),
    pa.field("failed_reason", pa.string()),  # null when the sample is usable
    pa.field("failed_stage", pa.string()),  # read | embed, null when usable
    pa.field("clip_score", pa.float32()),
])

SEMDEDUP = pa.schema([
    pa.field("dedup_cluster", pa.int32()),
    pa.field("dedup_distance", pa.float32()),
    pa.field("dup_of_hi", pa.uint64()),  # uid of the earlier member achieving m_j, or null
    pa.field("dup_of_lo", pa.uint64()),
    pa.field("dup_similarity", pa.float32()),
    pa.field("removed", pa.bool_(), nullable=False),
    # m_j itself (float64, as decided): the removals at any eps (`plan --eps`); not in the ledger
    pa.field("dup_similarity_exact", pa.float64()),
])

CLIP_FILTER = pa.schema([
    pa.field("removed", pa.bool_(), nullable=False),
    pa.field("reason", pa.string()),
])

DBP = pa.schema([
    pa.field("cluster", pa.int32()),
    pa.field("distance", pa.float32()),
    pa.field("removed", pa.bool_(), nullable=False),
])

DBP_CLUSTERS = pa.schema([
    pa.field("id", pa.int32(), nullable=False),
    pa.field("size", pa.int64(), nullable=False),
    pa.field("d_intra", pa.float64()),
    pa.field("d_inter", pa.float64()),
    pa.field("complexity", pa.float64()),
    pa.field("probability", pa.float64(), nullable=False),
    pa.field("budget", pa.int64(), nullable=False),
    pa.field("kept", pa.int64(), nullable=False),
])

# The ledger: one row per input sample, the contract of ledger/*.parquet.
LEDGER = pa.schema([
    pa.field("key", pa.string()),
    pa.field("uid", pa.string()),
    pa.field("shard", pa.string()),
    pa.field("status", pa.string(), nullable=False),  # kept | removed | failed
    pa.field("stage", pa.string(), nullable=False),  # read | embed | semdedup | clip_filter | dbp
    pa.field("reason", pa.string()),
    pa.field("dedup_cluster", pa.int32()),
    pa.field("dedup_distance", pa.float32()),
    pa.field("dup_of", pa.string()),  # uid of the earlier near-duplicate
    pa.field("dup_similarity", pa.float32()),
    pa.field("clip_score", pa.float32()),
    pa.field("cluster", pa.int32()),
    pa.field("distance", pa.float32()),
])
