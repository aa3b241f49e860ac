"""The models of report.json's ``examples`` (``report/examples.py``): some samples of a few
concepts, some duplicate pairs and some of clip_filter's removals, as thumbnails beside the
page (see ``model.py``). The ledger's fields of a shown sample are absent in reports of older
versions; the page then says less about it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt


class Shown(BaseModel):
    """A sample shown on the page, with its ledger row's step, reason and figures."""

    model_config = ConfigDict(extra="forbid")
    key: str | None
    shard: str | None
    uid: str | None
    status: Literal["kept", "removed", "failed"] = Field(description="its ledger status")
    stage: str = Field(None, description="the step that decided (the ledger's stage)")
    reason: str | None = Field(None, description="the ledger's reason")
    cluster: NonNegativeInt | None = Field(None, description="its dbp concept")
    distance: float | None = Field(None, description="its distance to its concept's centroid")
    clip_score: float | None = Field(None)
    dup_of: str | None = Field(None, description="uid of its nearest earlier member of its "
                               "semdedup cluster")
    dup_similarity: float | None = Field(None, description="its cosine to dup_of")
    caption: str
    thumb: str | None = Field(description="its thumbnail, relative to the page; null when "
                              "its shard or image could not be read")
    error: str = Field(None, description="why it has no thumbnail")


class ConceptShown(BaseModel):
    """A concept shown with some of its kept and pruned members."""

    model_config = ConfigDict(extra="forbid")
    id: NonNegativeInt
    why: str = Field(description="largest, most complex or least complex")
    size: NonNegativeInt
    kept_count: NonNegativeInt
    complexity: float | None
    kept: list[Shown] = Field(description="a seeded sample of its kept members")
    pruned: list[Shown] = Field(description="a seeded sample of the members dbp removed")


class DuplicatePair(BaseModel):
    """A sample semdedup removed and the one it was removed in favour of (which a later step
    may have removed in turn)."""

    model_config = ConfigDict(extra="forbid")
    similarity: float
    removed: Shown
    kept_for: Shown


class Examples(BaseModel):
    """The page's pictures: seeded samples across all the input shards."""

    model_config = ConfigDict(extra="forbid")
    concepts: list[ConceptShown]
    duplicate_pairs: list[DuplicatePair]
    seed: int = Field(None, description="the seed of the samples (the run's)")
    clip_removed: list[Shown] = Field(None, description="a seeded sample of clip_filter's "
                                      "removals (when it ran)")
    clip_lowest_kept: float | None = Field(None, description="the lowest CLIP score "
                                           "clip_filter let through")
