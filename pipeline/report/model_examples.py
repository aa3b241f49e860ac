"""The models of report.json's ``examples`` (``report/examples.py``): some samples of a few
concepts and some duplicate pairs, as thumbnails beside the page (see ``model.py``)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt


class Shown(BaseModel):
    """A sample shown on the page."""

    model_config = ConfigDict(extra="forbid")
    key: str | None
    shard: str | None
    uid: str | None
    status: Literal["kept", "removed", "failed"] = Field(description="its ledger status")
    caption: str
    thumb: str | None = Field(description="its thumbnail, relative to the page; null when "
                              "its shard or image could not be read")
    error: str = Field(None, description="why its image could not be decoded")


class ConceptShown(BaseModel):
    """A concept shown with some of its kept and pruned members."""

    model_config = ConfigDict(extra="forbid")
    id: NonNegativeInt
    why: str = Field(description="largest, most complex or least complex")
    size: NonNegativeInt
    kept_count: NonNegativeInt
    complexity: float | None
    kept: list[Shown]
    pruned: list[Shown] = Field(description="members dbp removed")


class DuplicatePair(BaseModel):
    """A sample semdedup removed and the one it was kept for."""

    model_config = ConfigDict(extra="forbid")
    similarity: float
    removed: Shown
    kept_for: Shown


class Examples(BaseModel):
    """The page's pictures."""

    model_config = ConfigDict(extra="forbid")
    concepts: list[ConceptShown]
    duplicate_pairs: list[DuplicatePair]
