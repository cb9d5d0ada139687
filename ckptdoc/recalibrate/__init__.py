"""Recalibrate batch-norm statistics by streaming data through a Keras model.

Importing this package (or `ckptdoc.recalibrate.cli`) never imports TensorFlow or Keras: every
module that needs them imports them inside functions.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ckptdoc.recalibrate.errors import RecalibrationError


def recalibrate(*args: Any, **kwargs: Any) -> Any:
    """See `ckptdoc.recalibrate.api.recalibrate`."""
    from ckptdoc.recalibrate import api

    return api.recalibrate(*args, **kwargs)


def recalibrate_file(*args: Any, **kwargs: Any) -> Any:
    """See `ckptdoc.recalibrate.api.recalibrate_file`."""
    from ckptdoc.recalibrate import api

    return api.recalibrate_file(*args, **kwargs)


__all__ = ["RecalibrationError", "recalibrate", "recalibrate_file"]


class _CallableModule(types.ModuleType):
    """`ckptdoc.recalibrate(model, data)` keeps working once this subpackage is imported.

    Importing `ckptdoc.recalibrate.*` rebinds the attribute `ckptdoc.recalibrate` from the
    lazy API function to this package; making the package callable keeps both spellings valid.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return recalibrate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
