"""``evaluate/evaluate.json``: what each arm scored, seed by seed, and how each training run
is repeated (schemas/evaluate.schema.json is generated from these models)."""

from __future__ import annotations

import json
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, NonNegativeInt

Fraction = Annotated[float, Field(ge=0, le=1)]

SPREAD_RULE = ("spread: the standard deviation of an arm's accuracy over its seeds (n - 1 in "
               "the denominator); a difference to random exceeds the spread when |mean - "
               "mean of random| > spread + spread of random; with one seed there is no spread "
               "and no verdict")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EvalSet(_Section):
    path: str
    kind: str = Field(pattern="^(folder|shards)$")
    classes: NonNegativeInt
    samples: NonNegativeInt
    classnames: list[str]


class RunResult(_Section):
    """One arm trained with one seed, and its score."""

    arm: str
    seed: NonNegativeInt
    label: str
    subset_size: NonNegativeInt = Field(description="samples in the arm's shards")
    samples_seen: NonNegativeInt = Field(description="as the trainer rounds: whole batches")
    steps: NonNegativeInt
    top1: Fraction = Field(description="zero-shot top-1 accuracy")
    mean_per_class: Fraction
    eval_samples: NonNegativeInt = Field(description="labelled pictures scored")
    weights_sha256: str = Field(pattern="^[0-9a-f]{64}$", description="of the trained weights")
    probe_top1: Fraction | None = Field(None, description="linear probe (--probe-train)")
    train_s: NonNegativeFloat
    score_s: NonNegativeFloat
    command: str = Field(description="repeats the training run (from the run's folder)")
    checkpoint: str


class ArmSummary(_Section):
    """An arm over its seeds."""

    name: str
    subset_size: NonNegativeInt
    shards: str
    ledger: str | None = Field(description="the arm's own ledger (None: the run's)")
    top1: list[Fraction] = Field(description="per seed, in seed order")
    mean: Fraction
    spread: NonNegativeFloat | None
    probe_mean: Fraction | None = Field(None, description="linear probe top-1, mean over "
                                        "seeds")
    difference_to_random: float | None = Field(description="mean - random's mean")
    exceeds_spread: bool | None


class Evaluation(_Section):
    """What `conceptprune evaluate` found."""

    model_config = ConfigDict(extra="forbid", title="conceptprune evaluate.json")
    run: str = Field(description="the run's output folder")
    model: str
    samples_seen: NonNegativeInt = Field(description="asked for, per arm and seed")
    seeds: list[NonNegativeInt]
    eval_set: EvalSet
    templates: list[str]
    rule: str
    arms: list[ArmSummary]
    runs: list[RunResult]
    settings: dict[str, Any]


def evaluate_schema() -> dict[str, Any]:
    """The JSON schema of evaluate.json (draft 2020-12); the report's ``evaluate`` section
    is the same model, without this file's ``$id``."""
    return {"$schema": "https://json-schema.org/draft/2020-12/schema",
            "$id": "https://conceptprune.invalid/schemas/evaluate.schema.json",
            **Evaluation.model_json_schema()}


def evaluate_json_schema() -> str:
    return json.dumps(evaluate_schema(), indent=2, sort_keys=True) + "\n"
