"""Held-out loss / accuracy of a model in inference mode, streamed batch by batch.

The task is read off the shapes: one output unit with 0/1 labels = binary (accuracy at 0.5),
K > 1 units with integer or one-hot labels = multi-class (argmax), anything else = regression
(mean squared error, no accuracy). Outputs that are not probabilities are treated as logits.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from ckptdoc.recalibrate.data import Batch
from ckptdoc.recalibrate.report import EvalResult

_EPS = 1e-7


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _batch_scores(pred: np.ndarray, y: np.ndarray) -> tuple[str, float, float | None]:
    """(loss name, summed loss, summed correct or None) for one batch."""
    pred = np.asarray(pred, dtype=np.float64)
    y = np.asarray(y)
    n = len(pred)
    p2 = pred.reshape(n, -1)
    k = p2.shape[1]
    y_flat = y.reshape(n, -1)
    integral = np.all(np.isfinite(y_flat)) and np.all(np.equal(np.mod(y_flat, 1), 0))
    if k == 1 and y_flat.shape[1] == 1 and integral and set(np.unique(y_flat)) <= {0, 1}:
        p = p2[:, 0]
        if p.min() < 0 or p.max() > 1:
            p = 1 / (1 + np.exp(-p))
        t = y_flat[:, 0].astype(np.float64)
        p = np.clip(p, _EPS, 1 - _EPS)
        loss = -(t * np.log(p) + (1 - t) * np.log(1 - p)).sum()
        return "binary crossentropy", float(loss), float(((p > 0.5) == (t > 0.5)).sum())
    if k > 1 and ((y_flat.shape[1] == 1 and integral) or y_flat.shape[1] == k):
        labels = y_flat[:, 0].astype(np.int64) if y_flat.shape[1] == 1 else y_flat.argmax(axis=1)
        if labels.min() >= 0 and labels.max() < k:
            probs = p2
            sums = probs.sum(axis=1)
            if probs.min() < 0 or probs.max() > 1 or not np.allclose(sums, 1, atol=1e-3):
                probs = _softmax(probs)
            loss = -np.log(np.clip(probs[np.arange(n), labels], _EPS, 1.0)).sum()
            correct = (probs.argmax(axis=1) == labels).sum()
            return "crossentropy", float(loss), float(correct)
    if p2.shape == y_flat.shape:
        return "mean squared error", float(((p2 - y_flat) ** 2).mean(axis=1).sum()), None
    raise ValueError(f"predictions of shape {pred.shape} do not match labels of shape {y.shape}")


def score(
    predictions: Iterable[tuple[Any, np.ndarray | None, int]], source: str
) -> EvalResult | None:
    """Loss / accuracy over `(predictions, labels, batch size)` triples; None when a batch has
    no labels or the predictions cannot be scored against them (several outputs, odd shapes)."""
    n = 0
    loss_sum = 0.0
    correct: float | None = 0.0
    loss_name = ""
    for out, y, size in predictions:
        if y is None or isinstance(out, list | tuple | dict):
            return None
        try:
            loss_name, loss, corr = _batch_scores(np.asarray(out), np.asarray(y))
        except ValueError:
            return None
        loss_sum += loss
        correct = None if corr is None or correct is None else correct + corr
        n += size
    if n == 0:
        return None
    return EvalResult(
        samples=n,
        loss=loss_sum / n,
        accuracy=None if correct is None else correct / n,
        loss_name=loss_name,
        source=source,
    )


def evaluate(model: Any, batches: Iterable[Batch], source: str) -> EvalResult | None:
    """Inference-mode loss / accuracy over labelled batches; None when there are no labels."""
    from ckptdoc.recalibrate import backends

    fn = backends.current().inference(model)
    # Labels are checked before the model runs on a batch: an unlabelled set costs nothing.
    return score(((fn(b.x) if b.y is not None else None, b.y, b.size) for b in batches), source)
