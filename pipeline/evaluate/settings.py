"""The settings of ``conceptprune evaluate``: what to train, for how long, and on what to score."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, field_validator

from pipeline.errors import ConceptpruneError

PRUNED, RANDOM, FULL = "pruned", "random", "full"
AFTER = "after-"  # after-<step>: the samples still in after that pruning step
ONLY = "-only"  # <step>-only: the first pruning step's survivors (an alias of after-<step>)


class EvaluateError(ConceptpruneError, ValueError):
    """An evaluation that cannot start or go on; the message names the fix."""


class EvaluateSettings(BaseModel):
    """Everything that decides an arm's training and scoring (part of each result's
    fingerprint: a finished arm and seed is trained again only when one of them changes)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, strict=False)

    arms: list[str] = Field(default=[PRUNED, RANDOM], description=(
        "pruned (always), random, full, after-<step> or <first step>-only"))
    samples_seen: PositiveInt = Field(description="training samples seen by every arm")
    model: str = Field(description="open_clip architecture trained from scratch")
    eval: str = Field(description="labelled set: class folders, or shards with .cls")
    classnames: str | None = Field(None, description="file of class names, one a line")
    probe_train: str | None = Field(None, description="labelled set a linear probe is fitted "
                                    "on (then scored on eval)")
    templates: list[str] = Field(default=["a photo of a {}."], min_length=1)
    seeds: PositiveInt = 3
    batch_size: PositiveInt = 256
    lr: PositiveFloat = 5e-4
    wd: float = Field(0.2, ge=0)
    warmup: int | None = Field(None, ge=0, description="steps; default a tenth of them")
    epochs: PositiveInt = Field(1, description="checkpoints: samples_seen is split among them")
    workers: int = Field(4, ge=0, description="the trainer's data loader processes")
    precision: str = Field("auto", description="open_clip's --precision; auto: amp on a GPU, "
                           "fp32 on the CPU")
    eval_batch_size: PositiveInt = 256
    threads: PositiveInt | None = Field(None, description="torch threads of the trainer and "
                                        "the scoring (for the same figures on a CPU rerun)")
    trainer_python: str | None = Field(None, description="the trainer's interpreter")
    trainer_path: str | None = Field(None, description="put first on the trainer's path "
                                     "(webdataset <= 0.2.86)")
    launcher: str | None = Field(None, description="command before the trainer's module, "
                                 "e.g. 'torchrun --nproc_per_node 8'")
    trainer_args: list[str] = Field(default_factory=list, description="more arguments to "
                                    "open_clip_train.main")

    @field_validator("templates")
    @classmethod
    def _one_slot(cls, templates: list[str]) -> list[str]:
        for template in templates:
            if template.count("{}") != 1:
                raise ValueError(f"template {template!r} must hold one {{}} for the class name")
        return templates

    def training(self) -> dict:
        """The settings that decide a training run (its fingerprint)."""
        return self.model_dump(include={
            "samples_seen", "model", "batch_size", "lr", "wd", "warmup", "epochs", "precision",
            "workers", "launcher", "trainer_args", "threads"})

    def scoring(self) -> dict:
        """The settings that decide a checkpoint's score."""
        return self.model_dump(include={"templates", "classnames", "threads"})
