"""`Options`: everything one recalibration is asked to do, as one value.

The CLI parses its flags into one, the Python API builds one from keyword arguments, and the
targets and the pipeline read what they need from it; no option is threaded through
signatures. Where the result is written (`--output`, `--in-place`) is not here: that belongs
to the pipeline's write step.

Must not know: Keras, TensorFlow, file formats, the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ckptdoc.recalibrate.data import Budget, DataSource, ImageOptions, from_feeds, from_object
from ckptdoc.recalibrate.errors import RecalibrationError

MODES = ("precise", "sequential")
DEFAULT_BATCH_SIZE = 64
DEFAULT_SAMPLES = 4096


class _DefaultBudget:
    """`samples` left unset: 4096 samples, unless `batches` is given (then the batches
    decide). The one place the default budget lives."""

    def __repr__(self) -> str:
        return f"{DEFAULT_SAMPLES} unless batches is given"


DEFAULT = _DefaultBudget()


@dataclass(frozen=True)
class Options:
    """What to measure with and how; see `ckptdoc recalibrate --help` for each field."""

    #: Calibration data: a `.npz` / `.npy` path or folder, an image folder, `module:function`,
    #: an array, an `(x, y)` pair, a `tf.data.Dataset` or any iterable of batches.
    data: Any
    #: Labelled held-out data for the before / after check (default: the calibration labels).
    eval_data: Any = None
    mode: str = "precise"
    batch_size: int = DEFAULT_BATCH_SIZE
    #: At most this many samples or batches, not both (`samples=None`: all of the data).
    #: Unset: 4096 samples, or `batches` batches when that is given.
    samples: int | None | _DefaultBudget = DEFAULT
    batches: int | None = None
    x_key: str = "x"
    y_key: str = "y"
    images: ImageOptions = field(default_factory=ImageOptions)
    #: `module:function` building the model (weights-only files, TF2 object checkpoints) or
    #: the TF1 graph (checkpoints without a `.meta`).
    model_spec: str | None = None
    allow_unsafe_code: bool = False
    #: TF1 graphs: placeholder -> data key, placeholder -> fixed value, the predictions tensor.
    feeds: Mapping[str, str] = field(default_factory=dict)
    sets: Mapping[str, str] = field(default_factory=dict)
    predictions: str | None = None
    #: Write even when the held-out check or the audit of the copy says no (never NaN stats).
    force: bool = False
    #: Local devices to split each batch over (data-parallel through the backend's own
    #: engine); None: all of them. The statistics are the same as on one device.
    devices: int | None = 1

    def __post_init__(self) -> None:
        if isinstance(self.samples, _DefaultBudget):
            object.__setattr__(self, "samples", DEFAULT_SAMPLES if self.batches is None else None)
        elif self.samples is not None and self.batches is not None:
            raise RecalibrationError("give --samples or --batches, not both")
        if self.mode not in MODES:
            raise RecalibrationError(
                f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}"
            )
        if self.batch_size < 1:
            raise RecalibrationError("batch size must be at least 1")
        samples = self.budget.samples
        if samples is not None and samples < 2:
            raise RecalibrationError("--samples must be at least 2 (a variance needs two)")
        if self.batches is not None and self.batches < 1:
            raise RecalibrationError("--batches must be at least 1")
        if self.devices is not None and self.devices < 1:
            raise RecalibrationError("--devices must be at least 1 (or all)")

    @property
    def budget(self) -> Budget:
        samples = None if isinstance(self.samples, _DefaultBudget) else self.samples
        return Budget(samples=samples, batches=self.batches)  # resolved in __post_init__

    def source(self) -> DataSource:
        return self._open(self.data)

    def eval_source(self) -> DataSource | None:
        return None if self.eval_data is None else self._open(self.eval_data)

    def feed_source(self, keys: set[str], held_out: bool = False) -> DataSource | None:
        """TF1 graphs: the data for placeholders fed from several `.npz` keys."""
        spec = self.eval_data if held_out else self.data
        if spec is None:
            return None
        return from_feeds(spec, keys, batch_size=self.batch_size, x_key=self.x_key,
                          y_key=self.y_key, images=self.images)

    def _open(self, spec: Any) -> DataSource:
        return from_object(spec, batch_size=self.batch_size, x_key=self.x_key,
                           y_key=self.y_key, images=self.images)


__all__ = ["DEFAULT_BATCH_SIZE", "DEFAULT_SAMPLES", "MODES", "Options"]
