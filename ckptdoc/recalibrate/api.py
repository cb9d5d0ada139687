"""The Python API: `ckptdoc.recalibrate(model, data)` on an in-memory Keras 3 model, and
`recalibrate_file(path, data)` on a file, which runs the same pipeline as the CLI."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ckptdoc.recalibrate.options import Options
from ckptdoc.recalibrate.pipeline import Outcome
from ckptdoc.recalibrate.report import RecalibrationReport


def recalibrate(
    model: Any,
    data: Any,
    *,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> RecalibrationReport:
    """Replace every BN layer's moving statistics with exact statistics over `data`.

    `data`: a `.npz` / `.npy` path or folder, an array, an `(x, y)` pair of arrays, a
    `tf.data.Dataset`, any re-iterable of batches (arrays, `(x, y)` tuples, dicts), or a
    zero-argument function returning one. Keyword options are `Options` fields: `mode`,
    `batch_size`, `samples` / `batches` (both None: all of the data), `eval_data`, `x_key`,
    `y_key`, `images`. The model's BN variables are updated in place; on any error they are
    put back as they were. With labels (in `data` or `eval_data`) the report carries inference
    loss / accuracy before and after.

    The same checks as for a file (`pipeline.judge`): non-finite statistics, a failed
    self-check (`report.self_check`) or worse held-out results put the old statistics back
    and raise `RecalibrationError` with the reason; `force=True` keeps the new ones in all but
    the first case.
    """
    from ckptdoc.recalibrate.engine import assign, find_bn_layers, snapshot
    from ckptdoc.recalibrate.errors import RecalibrationError
    from ckptdoc.recalibrate.keras_model import measure
    from ckptdoc.recalibrate.pipeline import judge

    opts = Options(data=data, **options)
    layers = find_bn_layers(model)
    old = [snapshot(bn) for bn in layers]
    report = measure(model, opts, progress)
    new = {bn.path: tuple(snapshot(bn).values()) for bn in layers}
    refused, _ = judge(report, new, opts.force)
    if refused:
        for bn, values in zip(layers, old, strict=True):
            assign(bn, values)
        raise RecalibrationError(refused + ". The model is unchanged")
    return report


def recalibrate_file(
    path: str | Path,
    data: Any,
    *,
    output: str | Path | None = None,
    in_place: bool = False,
    progress: Callable[[int], None] | None = None,
    **options: Any,
) -> Outcome:
    """Recalibrate a model file or TF checkpoint and write a checked copy, as
    `ckptdoc recalibrate` does: `outcome.written`, `outcome.output`, `outcome.refused`.

    Keyword options are `Options` fields (`model_spec`, `feeds`, `sets`, `force`, ...).
    Errors in the input or the options raise `CheckpointError` / `RecalibrationError`.
    """
    from ckptdoc.recalibrate import pipeline
    from ckptdoc.recalibrate.targets import open_target

    target = open_target(path)
    return pipeline.run(target, Options(data=data, **options),
                        None if output is None else Path(output), in_place=in_place,
                        progress=progress)
