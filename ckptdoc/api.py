"""`ckptdoc.audit`: the gate as `ckptdoc audit` runs it, with `data=` the data check too.

The audit half (`auditor.py`) never imports the recalibration engine; with `data`, this
module hands the gate a run that compares each file with the data through it
(`recalibrate/observe.py`), as the CLI's `audit --data` does.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ckptdoc.auditor import audit as _audit
from ckptdoc.auditor import audit_files
from ckptdoc.report.model import AuditReport
from ckptdoc.rules import Severity


def audit(
    paths: str | Path | Iterable[str | Path],
    *,
    select: Sequence[str] | None = None,
    ignore: Sequence[str] = (),
    tolerances: Mapping[str, float] | None = None,
    config: bool | str | Path = True,
    baseline: bool | str | Path = True,
    jobs: int = 1,
    fail_on: Severity | str | None = None,
    data: Any = None,
    samples: int | None = None,
    batch_size: int | None = None,
    model: str | None = None,
    respect_gitignore: bool = True,
) -> AuditReport:
    """Audit checkpoints as `ckptdoc audit` does and return the report (see
    `auditor.audit` for every argument but the data ones).

    `data`: also compare each model's stored BN statistics with this data's, as `ckptdoc
    audit --data` (a path, `module:function`, an array...; `samples`, `batch_size`, `model`
    as recalibrate takes them). Each file report then has `data` (per layer: shift, variance
    ratio, sampling errors, verdict) and BN012 findings. Needs Keras / TensorFlow.
    """
    run = None
    if data is not None:
        from ckptdoc.recalibrate.observe import data_options, with_data

        run = with_data(audit_files, data_options(data, model=model, samples=samples,
                                                  batch_size=batch_size))
    return _audit(paths, select=select, ignore=ignore, tolerances=tolerances, config=config,
                  baseline=baseline, jobs=jobs, fail_on=fail_on, run=run,
                  respect_gitignore=respect_gitignore)
