"""A linear probe: multinomial logistic regression on frozen, normalised image features,
fitted full-batch with L-BFGS in float64 from zero weights, so a rerun gives the same
classifier. The L2 penalty is fixed (``L2``), not tuned: the probe compares arms, it does not
chase the best number for one."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

L2 = 1e-3  # on the weights, per sample
STEPS = 200


def fit_probe(features: np.ndarray, labels: np.ndarray, classes: int
              ) -> Callable[[np.ndarray], np.ndarray]:
    """Fit on (features, labels); returns a function giving the predicted class of rows."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weight = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=STEPS,
                                  line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        optimizer.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weight + bias, y) + \
            L2 * (weight ** 2).sum()
        value.backward()
        return value

    optimizer.step(loss)
    w, b = weight.detach().numpy(), bias.detach().numpy()
    return lambda rows: np.argmax(rows @ w + b, axis=1)
