"""What every step of a run sees: the config, the work folder, the engine and the samples.

Per-sample state is a set of numpy arrays indexed by global row (ingest order); the vectors
themselves stay on disk behind the ``VectorStore``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.config import RunConfig
from pipeline.engines.base import Engine
from pipeline.io.vector_store import VectorStore
from pipeline.stages.ingest import IngestedPart
from pipeline.workdir import WorkDir


@dataclass
class RunContext:
    cfg: RunConfig
    work: WorkDir
    engine: Engine
    parts: list[IngestedPart]
    store: VectorStore
    uid_hi: np.ndarray
    uid_lo: np.ndarray
    usable: np.ndarray  # False for samples that failed at read
    clip_score: np.ndarray  # NaN where there is none

    @property
    def size(self) -> int:
        return len(self.usable)
