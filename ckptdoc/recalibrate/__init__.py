"""Recalibrate batch-norm statistics by streaming data through a Keras model.

Importing this package (or `ckptdoc.recalibrate.cli`) never imports TensorFlow or Keras: every
module that needs them imports them inside functions.
"""

from __future__ import annotations

from typing import Any


class RecalibrationError(Exception):
    """A user mistake or a refusal (bad --data, bad --model, unsafe model). Exit code 2."""


def recalibrate(*args: Any, **kwargs: Any) -> Any:
    """See `ckptdoc.recalibrate.api.recalibrate`."""
    from ckptdoc.recalibrate.api import recalibrate as _recalibrate

    return _recalibrate(*args, **kwargs)


__all__ = ["RecalibrationError", "recalibrate"]
