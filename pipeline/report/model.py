"""What ``report/report.json`` holds, as pydantic models: ``schemas/report.schema.json`` is
generated from them (``conceptprune report-schema``) and every report a run writes is checked
against that schema (``publish.validate_report``).

The report itself is built as a plain dict (``stages/report.py``, ``run_outputs.py``, each
step's ``report``); these models only describe it. A step's own section is a top-level key
named after the step: the top level accepts keys it does not list. The sections listed here
accept no key they do not list. The examples' models are in ``model_examples.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue

from pipeline.evaluate.model import Evaluation
from pipeline.report.model_examples import Examples

Fraction = Annotated[float, Field(ge=0, le=1)]
Counts = Annotated[list[NonNegativeInt], Field(description="samples per bin")]
FileIdentity = Annotated[list[str | int | None], Field(
    description="what pins an input file: its path, size and mtime in ns; for a remote "
    "object its URL, size and version fields (ETag, ...)")]


class Section(BaseModel):
    """A section with a fixed set of keys."""

    model_config = ConfigDict(extra="forbid")


class Stage(Section):
    """One row of the funnel."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description=(
        "read, then each pruning step of the registry in order (semdedup, clip_filter, dbp)"))
    in_: NonNegativeInt = Field(alias="in", description="samples that reached it")
    out: NonNegativeInt = Field(description="samples it left alive")
    removed: NonNegativeInt = Field(description="samples it removed (read: failed)")


class Parameters(BaseModel):
    """The run's whole configuration, as it ran (schemas/config.schema.json)."""

    model_config = ConfigDict(extra="allow")
    input: dict[str, Any]
    output: str
    seed: int


class ShardCounts(BaseModel):
    """What became of one input shard's samples."""

    model_config = ConfigDict(extra="allow")
    __pydantic_extra__: dict[str, NonNegativeInt] = Field(init=False)
    read: NonNegativeInt
    kept: NonNegativeInt
    removed: NonNegativeInt
    failed: NonNegativeInt


class ShardInput(Section):
    """An input shard of the image path."""

    shard: str = Field(description="the shard's name")
    file: FileIdentity


class PartInput(Section):
    """An input part of the embeddings path: its metadata and embedding files."""

    part: str = Field(description="the part's name")
    files: list[FileIdentity]


class FailureExample(Section):
    """A failed sample."""

    key: str | None
    shard: str | None
    reason: str


class FailureKind(Section):
    """Failed samples of one kind: the step and the reason, what varies left out."""

    kind: str = Field(description="e.g. 'read: missing caption'")
    count: int = Field(ge=1)
    examples: list[FailureExample] = Field(max_length=3, description="the first few")


class Histograms(Section):
    """Histograms of the ledger's scores, over the same bins."""

    bins: list[float] = Field(min_length=2, description="bin edges, -1 to 1")
    clip_before: Counts = Field(description="CLIP scores before clip_filter")
    clip_after: Counts = Field(description="CLIP scores after clip_filter")
    dup_similarity: Counts = Field(description="each sample's similarity to its nearest "
                                   "earlier duplicate")


class Concept(Section):
    """One concept of dbp (a row of WORK/dbp/clusters.parquet)."""

    id: NonNegativeInt
    size: NonNegativeInt = Field(description="members that reached dbp")
    d_intra: float | None = Field(description="mean distance of members to their centroid")
    d_inter: float | None = Field(description="mean distance of its centroid to the dbp.l nearest "
                                  "other centroids")
    complexity: float | None = Field(description="d_intra x d_inter")
    probability: Fraction = Field(description="softmax of complexity / dbp.temperature")
    budget: NonNegativeInt = Field(description="members it may keep")
    kept: NonNegativeInt


class EpsCurve(Section):
    """What semdedup would remove at other eps, from this run's m_j (which do not depend on
    eps): semdedup's removals alone (later steps would see other samples)."""

    eps: list[Annotated[float, Field(gt=0, lt=1)]] = Field(
        min_length=1, description="ascending; the run's own among them")
    removed: list[NonNegativeInt] = Field(description="samples removed at each eps")
    reaching: NonNegativeInt = Field(description="samples that reached semdedup")
    exact: bool = Field(description="false: from m_j rounded to float32 (a work folder of an "
                        "older version), so counts may be off by members near 1 - eps")


class Semdedup(Section):
    """semdedup's settings, as it ran."""

    k: NonNegativeInt = Field(description="the clusters semdedup used")
    eps: float = Field(gt=0, lt=1, description="a member whose cosine to an earlier one in "
                       "its cluster exceeds 1 - eps is removed")
    curve: EpsCurve = Field(None, description="removals at other eps (absent in reports of "
                            "older versions)")


class Dbp(Section):
    """dbp's budget."""

    k: NonNegativeInt = Field(description="concepts")
    target: NonNegativeInt = Field(description="samples dbp keeps in all (N)")
    reaching: NonNegativeInt = Field(description="samples that reached dbp (M)")
    keep: Literal["hard", "easy", "random"] = Field(
        description="which members a concept keeps: farthest, closest or random")


class Subset(Section):
    """What subset.npy holds."""

    file: str
    uids: NonNegativeInt = Field(description="uids in it: the kept samples")
    uid_source: Literal["given", "derived", "mixed"] = Field(
        description="the samples' own uids, derived from shard name and key, or both")


class EmbedModels(BaseModel):
    """The models that embedded the shards (empty when no shard was embedded)."""

    model_config = ConfigDict(extra="allow")
    clip: str = Field(None, description="the CLIP model, its weights and device")
    clip_random_weights: bool = Field(None, description="true: CLIP scores mean nothing")
    cluster: str | None = Field(None, description="the clustering model, if any")
    cluster_random_weights: bool | None = Field(None)


class DamagedShard(Section):
    """A shard that could not be read to its end: what of it was read."""

    shard: str
    samples_read: NonNegativeInt
    damage: str
    expected: int | None = Field(description="samples its img2dataset _stats.json promised")


class Decoding(Section):
    """How images were decoded (SPEC section 5b)."""

    rules: str
    version: int
    max_pixels: int
    background: str


class Embed(Section):
    """The image path's embedding of the input shards."""

    models: EmbedModels
    shards: NonNegativeInt
    damaged_shards: list[DamagedShard]
    failed: NonNegativeInt = Field(description="samples that could not be embedded")
    decoding: Decoding
    derived_uids: NonNegativeInt = Field(description="samples whose json held no uid")


class ListedShard(Section):
    """An output shard."""

    file: str = Field(description="its name in the shards folder")
    samples: NonNegativeInt
    bytes: NonNegativeInt


class OutputShards(Section):
    """The kept samples copied into new shards."""

    folder: str
    count: NonNegativeInt = Field(description="shards written")
    sizes: str = Field(description="the file listing every shard's sample count")
    samples: NonNegativeInt
    bytes: NonNegativeInt
    copied_by_span: NonNegativeInt
    copied_by_parsing: NonNegativeInt
    kept_not_copied: NonNegativeInt
    listed: list[ListedShard] = Field(None, description="the first shards, each with its "
                                      "counts (absent in reports of older versions)")


class Ledger(Section):
    """The per-sample ledger: why each input sample was kept, removed or failed."""

    folder: str = Field(description="relative to the output folder")
    parts: NonNegativeInt = Field(description="parquet files in it")
    rows: NonNegativeInt = Field(description="one per input sample")


class Report(BaseModel):
    """What a run pruned, by which step and why; everything report/index.html shows.

    A key not listed here is the section of a pruning step (named after it) or one added
    to a finished report (the demo's figures, as demo)."""

    model_config = ConfigDict(extra="allow", title="conceptprune report.json",
                              json_schema_extra={
                                  "$schema": "https://json-schema.org/draft/2020-12/schema",
                                  "$id": "https://conceptprune.invalid/schemas/"
                                         "report.schema.json"})
    input_samples: NonNegativeInt = Field(description="samples read")
    kept: NonNegativeInt
    failed: NonNegativeInt = Field(description="samples that could not be used")
    keep_fraction: Fraction = Field(description="kept / input_samples")
    stages: list[Stage] = Field(min_length=1, description="the funnel")
    parameters: Parameters
    shards: dict[str, ShardCounts] = Field(description="per input shard")
    timings_s: dict[str, NonNegativeFloat] = Field(description="seconds per step")
    semdedup: Semdedup = Field(None, description="when semdedup ran")
    dbp: Dbp = Field(None, description="when dbp ran")
    embed: Embed = Field(None, description="the image path's")
    subset: Subset
    output_shards: OutputShards = Field(None, description="when write.enabled")
    ledger: Ledger = Field(None, description="absent in reports of older versions")
    engine: Literal["local", "ray", "spark"]
    inputs: list[ShardInput | PartInput] = Field(description="every input file, pinned")
    failures_by_kind: list[FailureKind] = Field(description="most frequent first")
    histograms: Histograms
    command: str = Field(description="a command that reproduces the run")
    examples: Examples = Field(None, description="the page's pictures (image path with dbp)")
    clusters: list[Concept] = Field(None, description="dbp's concepts, by id (when dbp ran)")
    evaluate: Evaluation = Field(None, description="added by `conceptprune evaluate`")


class _NoDefaults(GenerateJsonSchema):
    """A section that is not written is absent, never null: no defaults in the schema."""

    def default_schema(self, schema: Mapping[str, Any]) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])


def report_schema() -> dict[str, Any]:
    """The JSON schema of report.json (draft 2020-12)."""
    return Report.model_json_schema(schema_generator=_NoDefaults)


def report_json_schema() -> str:
    """The JSON schema of report.json, as shipped in schemas/report.schema.json."""
    return json.dumps(report_schema(), indent=2, sort_keys=True) + "\n"
