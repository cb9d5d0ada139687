"""Exact, mergeable float64 moments: the core of recalibration, tested without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ckptdoc.recalibrate.stats import Moments, channel_axes


def _accumulate(x: np.ndarray, axis: int | list[int], sizes: list[int]) -> Moments:
    acc: Moments | None = None
    start = 0
    for n in sizes:
        part = Moments.from_batch(x[start : start + n], axis)
        acc = part if acc is None else acc.merge(part)
        start += n
    assert acc is not None
    return acc


def test_equals_numpy_float64_on_conv_shaped_data() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (37, 4, 5, 6)).astype(np.float32)
    m = _accumulate(x, -1, [10, 10, 10, 7])
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(m.mean, x64.mean(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(m.variance, x64.var(axis=(0, 1, 2)), rtol=1e-12)
    np.testing.assert_allclose(m.unbiased_variance, x64.var(axis=(0, 1, 2), ddof=1), rtol=1e-12)
    assert m.total == 37 * 4 * 5


@pytest.mark.parametrize("axis", [1, -3, [1, 3], (-1, 2)])
def test_any_axis_including_negative_and_several(axis: int | list[int]) -> None:
    rng = np.random.default_rng(1)
    x = rng.normal(-2.0, 0.5, (20, 3, 4, 5))
    kept, reduced = channel_axes(x.ndim, axis)
    m = _accumulate(x, axis, [3, 17])
    np.testing.assert_allclose(m.mean, x.mean(axis=reduced), rtol=1e-12)
    np.testing.assert_allclose(m.variance, x.var(axis=reduced), rtol=1e-12)
    assert m.mean.shape == tuple(x.shape[a] for a in kept)


def test_large_offset_keeps_precision() -> None:
    # Naive sum-of-squares loses everything here; Welford / Chan does not.
    rng = np.random.default_rng(2)
    x = (1e6 + rng.normal(0, 1e-2, (4000, 3))).astype(np.float64)
    m = _accumulate(x, -1, [1000] * 4)
    np.testing.assert_allclose(m.variance, x.var(axis=0), rtol=1e-6)


def test_mask_excludes_positions() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(6, 7, 2))
    mask = rng.random((6, 7, 1)) > 0.4
    m = Moments.from_batch(x[:3], -1, mask[:3]).merge(Moments.from_batch(x[3:], -1, mask[3:]))
    sel = x[np.broadcast_to(mask, x.shape)].reshape(-1, 2)
    np.testing.assert_allclose(m.mean, sel.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(m.variance, sel.var(axis=0), rtol=1e-12)


def test_empty_merge_is_identity() -> None:
    x = np.arange(12.0).reshape(6, 2)
    m = Moments.empty((2,)).merge(Moments.from_batch(x))
    np.testing.assert_allclose(m.mean, x.mean(axis=0))
    np.testing.assert_allclose(m.variance, x.var(axis=0))


def test_bad_axis_rejected() -> None:
    with pytest.raises(ValueError):
        channel_axes(2, 3)
    with pytest.raises(ValueError):
        channel_axes(3, [1, -2])


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(2, 60),
    cuts=st.lists(st.integers(1, 59), max_size=6),
    seed=st.integers(0, 2**16),
    shift=st.floats(-1e3, 1e3),
)
def test_batch_split_and_order_do_not_matter(
    n: int, cuts: list[int], seed: int, shift: float
) -> None:
    rng = np.random.default_rng(seed)
    x = rng.normal(shift, 2.0, (n, 3)).astype(np.float32)
    bounds = sorted({c for c in cuts if c < n})
    sizes = [b - a for a, b in zip([0, *bounds], [*bounds, n], strict=True)]
    whole = Moments.from_batch(x)
    split = _accumulate(x, -1, sizes)
    reverse = _accumulate(x[::-1].copy(), -1, sizes)
    for m in (split, reverse):
        np.testing.assert_allclose(m.mean, whole.mean, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(m.variance, whole.variance, rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(whole.variance, x.astype(np.float64).var(axis=0), rtol=1e-9)


def test_a_self_check_that_compared_nothing_never_passes() -> None:
    # An inference pass that reached no BN layer (data that could not be read again) used to
    # be a pass with nothing checked.
    from ckptdoc.recalibrate.selfcheck import compare

    stored = {"bn": (np.zeros(3), np.ones(3), 1e-3)}
    empty = compare(stored, {}, 0)
    assert not empty.passed and empty.unreached == ("bn",)
    assert "could not run" in empty.refusal()
    same = compare(stored, {"bn": (np.zeros(3), np.ones(3))}, 10)
    assert same.passed and same.worst is not None and same.worst.worst == 0
    off = compare(stored, {"bn": (np.zeros(3), np.full(3, 1.1))}, 10)
    assert not off.passed and "bn (mean 0 sd, variance" in off.refusal()
    nan = compare(stored, {"bn": (np.array([0, np.nan, 0]), np.ones(3))}, 10)
    assert not nan.passed  # NaN is never within tolerance
