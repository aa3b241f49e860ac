"""open_clip's own trainer (``open_clip_train.main``), as ``conceptprune evaluate`` starts it
for one arm and seed, in the trainer's environment (webdataset <= 0.2.86, which
open_clip's training extra pins, first on the path):

    python -m pipeline.evaluate.launch [open_clip_train.main's arguments]

Two things are added and nothing else is changed: conceptprune's model configs are
registered (so its tiny test model can be named), and the trainer's sample shuffle is given
a seeded generator. webdataset 0.2.x seeds ``shuffle`` from the process id and the clock when
it is given none, so two runs of one command would see the samples in another order.
``CONCEPTPRUNE_TRAIN_THREADS`` sets torch's thread count.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from typing import Any

MAX_WEBDATASET = (0, 2, 86)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split(".")[:3] if p.isdigit())


def seeded_shuffle(shuffle: Callable[..., Any], seed: int) -> Callable[..., Any]:
    """``webdataset.shuffle`` with a generator seeded from ``seed`` (one per pipeline)."""
    made = [0]

    def shuffle_seeded(*args: Any, **kwargs: Any) -> Any:  # noqa: ANN401
        kwargs.setdefault("rng", random.Random(seed * 1000 + made[0]))
        made[0] += 1
        return shuffle(*args, **kwargs)

    return shuffle_seeded


def main(argv: list[str]) -> None:
    import webdataset

    if _version(webdataset.__version__) > MAX_WEBDATASET:
        sys.exit(f"webdataset {webdataset.__version__} is first on this trainer's path; "
                 "open_clip's trainer needs <= 0.2.86: pip install --target DIR "
                 "webdataset==0.2.86 and give --trainer-path DIR")
    from open_clip_train.main import main as train
    from open_clip_train.params import parse_args

    from pipeline.embed.models import register_model_configs

    register_model_configs()
    threads = os.environ.get("CONCEPTPRUNE_TRAIN_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))
    webdataset.shuffle = seeded_shuffle(webdataset.shuffle, parse_args(argv).seed)
    train(argv)


if __name__ == "__main__":
    main(sys.argv[1:])
