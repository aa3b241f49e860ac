"""A trained checkpoint scored on a labelled set, as CLIP papers and DataComp score one:

- zero-shot: each class's text embedding is the mean of its prompts' (normalised), and a
  picture takes the class whose embedding is most similar to its own;
- optionally a linear probe: a logistic regression fitted on the frozen image features of
  another labelled set (``probe.py``), then applied to this one's.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.evaluate.labelled import LabelledSet
from pipeline.evaluate.probe import fit_probe


def _batches(labelled: LabelledSet, preprocess: Any, size: int  # noqa: ANN401
             ) -> Iterator[tuple[Any, list[int]]]:
    import torch

    pictures, labels = [], []
    for picture, label in labelled.images():
        pictures.append(preprocess(picture))
        labels.append(label)
        if len(pictures) == size:
            yield torch.stack(pictures), labels
            pictures, labels = [], []
    if pictures:
        yield torch.stack(pictures), labels


def _features(model: Any, preprocess: Any, labelled: LabelledSet, batch_size: int,  # noqa: ANN401
              device: str) -> tuple[Any, np.ndarray]:
    import torch

    features, labels = [], []
    with torch.inference_mode():
        for pictures, batch_labels in _batches(labelled, preprocess, batch_size):
            features.append(model.encode_image(pictures.to(device), normalize=True))
            labels.extend(batch_labels)
    return torch.cat(features), np.asarray(labels)


def _accuracy(guess: np.ndarray, label: np.ndarray, classes: int) -> tuple[float, float]:
    """Top-1 and the mean of the per-class accuracies (classes with pictures)."""
    per_class = [float((guess[label == c] == c).mean()) for c in range(classes)
                 if (label == c).any()]
    return float((guess == label).mean()), float(np.mean(per_class))


def _weights_sha256(model: Any) -> str:  # noqa: ANN401
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def score_checkpoint(checkpoint: Path, model_name: str, labelled: LabelledSet,
                     templates: list[str], batch_size: int, threads: int | None,
                     probe_train: LabelledSet | None = None) -> dict[str, Any]:
    """Zero-shot top-1 and mean per-class accuracy of ``checkpoint`` on ``labelled`` (and the
    linear probe's, when ``probe_train`` is given), with the sha256 of its weights: the same
    figures on a rerun come from the same weights."""
    import open_clip
    import torch

    from pipeline.embed.models import register_model_configs

    register_model_configs()
    if threads is not None:
        torch.set_num_threads(threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, _, preprocess = open_clip.create_model_and_transforms(
        model_name, pretrained=str(checkpoint), device=device)
    model.eval()
    classes = len(labelled.classnames)
    features, label = _features(model, preprocess, labelled, batch_size, device)
    with torch.inference_mode():
        classifier = open_clip.build_zero_shot_classifier(
            model, tokenizer=open_clip.get_tokenizer(model_name),
            classnames=labelled.classnames, templates=templates, num_classes_per_batch=16,
            device=device, use_tqdm=False)
        guess = (features @ classifier).argmax(dim=1).cpu().numpy()
    top1, mean_per_class = _accuracy(guess, label, classes)
    out = {"top1": top1, "mean_per_class": mean_per_class, "samples": int(len(label)),
           "classes": classes, "weights_sha256": _weights_sha256(model)}
    if probe_train is not None:
        train_x, train_y = _features(model, preprocess, probe_train, batch_size, device)
        predict = fit_probe(train_x.cpu().double().numpy(), train_y, classes)
        out["probe_top1"], _ = _accuracy(predict(features.cpu().double().numpy()), label,
                                         classes)
    return out
