"""A labelled evaluation set for the generated datasets: class folders of new pictures of the
concepts ``synth_images`` draws with the same seed and concept count, for ``conceptprune
evaluate``'s zero-shot scoring. Each class is named as the captions name its concept
("red circle on a stripes background"), so the prompt "a photo of a {}." reads like a
training caption. The pictures come from a random stream of their own: none is a training
picture.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.synth.images import STYLES, Concept, encode, make_concepts, render, render_scene

SIZES = {"shapes": (64, 128), "scenes": (128, 192)}  # synth's and the demo's picture sizes


def class_name(concept: Concept) -> str:
    return f"{concept.colour} {concept.shape} on a {concept.texture} background"


def synth_eval_set(out: str | Path, per_class: int, seed: int = 0, concepts: int = 10,
                   style: str = "shapes") -> Path:
    """Write ``out/<class name>/NNNNN.jpg``, ``per_class`` pictures for each concept."""
    if per_class < 1 or concepts < 1:
        raise ValueError(f"per_class and concepts must be positive, got {per_class}, {concepts}")
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}: use one of {', '.join(STYLES)}")
    paint = render_scene if style == "scenes" else render
    low, high = SIZES[style]
    catalog = make_concepts(concepts, np.random.default_rng(seed))  # as synth_images draws it
    draw = np.random.default_rng([seed, 0xE7A1])
    out = Path(out)
    names: set[str] = set()
    for concept in catalog:
        name = class_name(concept)
        if name in names:  # two concepts that look alike in words
            name = f"{name} ({concept.id})"
        names.add(name)
        folder = out / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            picture = paint(concept, draw, low, high)
            (folder / f"{i:05d}.jpg").write_bytes(encode(picture, "jpg", quality=90))
    return out
