"""The evidence ledger: every tensor of a file in one bucket. Knows what non-BN tensors are
called (weights, optimizer slots, moving-average state, counters), nothing about bytes or
rules.

A file's verdict can only be "clean" when every tensor is accounted for. A tensor that is in
no BN group and is not a known kind of non-BN tensor is *unexplained*; one that also looks
like a BN statistic (a 1-D float vector named like a mean or variance, or one beside a BN
layer's members with its channel count) is a statistic nobody audited, and the audit says it
cannot verify the file (BN010) instead of calling it clean.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ckptdoc.checkpoint import TensorInfo
from ckptdoc.groups import BNGroup, strip_object_suffix

__all__ = ["Ledger", "account"]

#: The buckets, in the order reports list them.
BUCKETS = ("bn", "weights", "optimizer", "ema", "counter", "unexplained")

_OPTIMIZER = re.compile(
    r"(?i)(\.OPTIMIZER_SLOT|^optimizer(_weights)?/|/(Adam|Adam_\d+|Momentum|RMSProp(_\d+)?|"
    r"Adagrad|Adadelta(_\d+)?|Ftrl(_\d+)?|AdamW(_\d+)?|Nadam(_\d+)?|Adamax(_\d+)?|LARS)$|"
    r"^(beta1_power|beta2_power)(_\d+)?$|^training(_\d+)?/|^(Adam|SGD|RMSprop|Adagrad|"
    r"Adadelta|Nadam|Adamax)(_\d+)?/|/(m|v|vhat|momentum|velocity|accumulator)(:\d+)?$)"
)
_EMA = re.compile(r"(?i)(ExponentialMovingAverage|/biased$|/local_step$|/ema(_\w+)?$|_ema$)")
_COUNTER = re.compile(
    r"(?i)(^|/)(global_step|iterations|iter|step|save_counter|_CHECKPOINTABLE_OBJECT_GRAPH|"
    r"seed_generator_state|num_batches_tracked|local_step|counter|step_counter)"
    r"(/\.ATTRIBUTES/VARIABLE_VALUE)?(:\d+)?$"
)
# Names of statistics: what a BN layer the audit missed would be called.
_STAT_NAME = re.compile(
    r"(?i)(^|[_\W])(mean|var|variance|std|stddev|sigma|stats?|running_[a-z]+|moving_[a-z]+|"
    r"pop_[a-z]+|population_[a-z]+|avg|average)(?=[_\W\d]|$)"
)
# Trained parameters by their usual names (`dense_1_b` is Keras 1's bias of `dense_1`).
_WEIGHT_NAME = re.compile(
    r"(?i)(^|_)(b|w|u|bias|biases|kernel|weights?|embeddings?|alpha|scale|offset)(_\d+)?$"
)


@dataclass(frozen=True)
class Ledger:
    """Where each tensor went, and the unexplained tensors that look like BN statistics."""

    buckets: Mapping[str, str]
    #: (key, why it looks like a BN statistic), for tensors in no BN group and no known kind.
    suspects: tuple[tuple[str, str], ...] = ()

    def counts(self) -> dict[str, int]:
        out = dict.fromkeys(BUCKETS, 0)
        for bucket in self.buckets.values():
            out[bucket] += 1
        return out

    def as_dict(self) -> dict[str, Any]:
        """Plain data for the reports: counts per bucket and the suspects with their reason."""
        return {"counts": self.counts(),
                "unexplained": [{"key": k, "why": why} for k, why in self.suspects]}


def account(tensors: Mapping[str, TensorInfo], groups: Iterable[BNGroup]) -> Ledger:
    """Put every tensor of the file in one bucket (`BUCKETS`)."""
    groups = list(groups)
    in_groups = {key for g in groups for key in g.all_keys}
    scopes = _bn_scopes(groups, tensors)
    buckets: dict[str, str] = {}
    suspects: list[tuple[str, str]] = []
    for key, info in tensors.items():
        if key in in_groups:
            buckets[key] = "bn"
            continue
        name = strip_object_suffix(key)
        if _OPTIMIZER.search(name):
            buckets[key] = "optimizer"
        elif _EMA.search(name):
            buckets[key] = "ema"
        elif _COUNTER.search(key) or (info.shape == () and np.issubdtype(info.dtype, np.integer)):
            buckets[key] = "counter"
        elif (why := _looks_like_statistic(name, info, scopes)) is not None:
            buckets[key] = "unexplained"
            suspects.append((key, why))
        else:
            buckets[key] = "weights"
    return Ledger(buckets, tuple(suspects))


def _looks_like_statistic(
    name: str, info: TensorInfo, scopes: Mapping[str, int]
) -> str | None:
    """Why a tensor in no BN group looks like a BN statistic, or None."""
    if len(info.shape) != 1 or not np.issubdtype(info.dtype, np.floating):
        return None
    scope, leaf = _split(name)
    leaf = re.sub(r":\d+$", "", leaf)
    if _WEIGHT_NAME.search(leaf):
        return None
    if scope in scopes and info.shape[0] == scopes[scope]:
        return f"a {info.shape[0]}-vector beside the members of the BN layer `{scope}`"
    if _STAT_NAME.search(leaf):
        return f"a {info.shape[0]}-vector named like a statistic"
    return None


def _bn_scopes(groups: list[BNGroup], tensors: Mapping[str, TensorInfo]) -> dict[str, int]:
    """The scope of each BN group's member keys, with its channel count."""
    out: dict[str, int] = {}
    for g in groups:
        channels = g.channels(tensors)
        if channels is None:
            continue
        for key in g.members.values():
            if key:
                out[_split(strip_object_suffix(key))[0]] = channels
    return out


def _split(name: str) -> tuple[str, str]:
    """(scope, leaf): TF and Keras names scope with `/`, PyTorch's state_dict with `.`."""
    sep = "/" if "/" in name else "."
    scope, _, leaf = name.rpartition(sep)
    return scope, leaf
