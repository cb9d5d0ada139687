"""The recalibration half's one exception: a leaf module, so the modules that raise it do not
import the package (whose `__init__` forwards to the API, which imports them)."""

from __future__ import annotations


class RecalibrationError(Exception):
    """A user mistake or a refusal (bad --data, bad --model, unsafe model). Exit code 2."""


__all__ = ["RecalibrationError"]
