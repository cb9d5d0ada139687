"""Each rule on a positive and a negative case, on in-memory groups."""

from __future__ import annotations

import numpy as np
import pytest

from ckptdoc.groups import find_groups
from ckptdoc.rules import RULES, RuleSelection, Severity, Tolerances, check_group, unknown_codes
from tests.memory import MemoryCheckpoint

rng = np.random.default_rng(0)
TRAINED_GAMMA = (1 + 0.1 * rng.standard_normal(8)).astype(np.float32)
TRAINED_BETA = (0.1 * rng.standard_normal(8)).astype(np.float32)
HEALTHY_MEAN = (rng.standard_normal(8) * 3).astype(np.float32)
HEALTHY_VAR = rng.uniform(0.5, 40, 8).astype(np.float32)


def layer(**overrides) -> dict[str, np.ndarray]:
    values = {
        "bn/gamma": TRAINED_GAMMA,
        "bn/beta": TRAINED_BETA,
        "bn/moving_mean": HEALTHY_MEAN,
        "bn/moving_variance": HEALTHY_VAR,
    }
    for name, value in overrides.items():
        if value is None:
            values.pop(f"bn/{name}", None)
        else:
            values[f"bn/{name}"] = np.asarray(value)
    return values


def codes(values, selection=None) -> list[str]:
    ckpt = MemoryCheckpoint(values)
    (group,) = find_groups(ckpt)
    return [f.rule for f in check_group(group, ckpt.read, selection or RuleSelection())]


def test_healthy_layer_has_no_findings():
    assert codes(layer()) == []


def test_bn001_missing_stats():
    assert codes(layer(moving_mean=None, moving_variance=None)) == ["BN001"]
    assert codes(layer(moving_variance=None)) == ["BN001"]


def test_bn002_stats_at_init_while_params_trained():
    assert codes(layer(moving_mean=np.zeros(8), moving_variance=np.ones(8))) == ["BN002"]


def test_bn002_not_flagged_for_freshly_initialised_layer():
    fresh = layer(
        gamma=np.ones(8), beta=np.zeros(8), moving_mean=np.zeros(8), moving_variance=np.ones(8)
    )
    assert codes(fresh) == []


def test_bn002_slim_layer_without_gamma_but_trained_beta():
    no_gamma = layer(gamma=None, moving_mean=np.zeros(8), moving_variance=np.ones(8))
    assert codes(no_gamma) == ["BN002"]


def test_bn002_zero_debias_local_step_zero():
    values = layer()
    values["bn/moving_mean/local_step"] = np.int64(0)
    assert codes(values) == ["BN002"]
    values["bn/moving_mean/local_step"] = np.int64(500)
    assert codes(values) == []


def test_bn002_message_mentions_inference_mode_training():
    ckpt = MemoryCheckpoint(layer(moving_mean=np.zeros(8), moving_variance=np.ones(8)))
    (group,) = find_groups(ckpt)
    (finding,) = check_group(group, ckpt.read, RuleSelection())
    assert "inference mode" in finding.message
    assert "training=True" in RULES["BN002"].explanation
    assert "held-out" in RULES["BN002"].explanation


def test_bn003_nan_or_inf():
    assert "BN003" in codes(layer(moving_variance=np.array([1, np.nan] * 4)))
    assert "BN003" in codes(layer(gamma=np.array([np.inf] + [1.0] * 7)))


def test_bn004_negative_variance():
    assert codes(layer(moving_variance=np.array([-0.5] + [2.0] * 7))) == ["BN004"]


def test_bn005_barely_moved_and_tolerance_is_an_option():
    close = layer(moving_mean=np.full(8, 0.01), moving_variance=np.full(8, 1.02))
    assert codes(close) == ["BN005"]
    assert codes(close, RuleSelection(tolerances=Tolerances(barely_moved=0.001))) == []


def test_bn006_dead_channels_is_info_and_tiny_real_variances_are_not_errors():
    values = layer(moving_variance=np.array([1e-36, 1e-36] + [1e5] * 6, np.float32),
                   moving_mean=np.array([1e3] * 8, np.float32))
    ckpt = MemoryCheckpoint(values)
    (group,) = find_groups(ckpt)
    findings = check_group(group, ckpt.read, RuleSelection())
    assert [(f.rule, f.severity) for f in findings] == [("BN006", Severity.INFO)]
    assert findings[0].details["dead_channels"] == 2


def test_bn007_shape_mismatch():
    assert codes(layer(moving_mean=np.zeros(4) + 0.3)) == ["BN007"]


def test_select_ignore_and_severity_override():
    broken = layer(moving_mean=np.zeros(8), moving_variance=np.ones(8))
    assert codes(broken, RuleSelection(ignore=frozenset({"BN002"}))) == []
    assert codes(broken, RuleSelection(select=frozenset({"BN00"}))) == ["BN002"]
    ckpt = MemoryCheckpoint(broken)
    (group,) = find_groups(ckpt)
    sel = RuleSelection(severities={"BN002": Severity.WARNING})
    assert check_group(group, ckpt.read, sel)[0].severity == Severity.WARNING


def test_unknown_codes():
    assert unknown_codes(["BN001", "BN", "XX9"]) == ["XX9"]


@pytest.mark.parametrize("code", list(RULES))
def test_every_rule_is_explained(code):
    rule = RULES[code]
    assert rule.title and len(rule.explanation) > 100


def test_every_rule_declares_its_fix_and_scope() -> None:
    # Issue 24: fix hints lived in the text report's own table, and scope in hand-wiring.
    from ckptdoc.rules import RULES

    for code, r in RULES.items():
        assert r.fix and r.fix.endswith("."), code
        assert r.scope in {"layer", "model", "file"}, code
    assert {c for c, r in RULES.items() if r.scope != "layer"} == {
        "BN008", "BN009", "BN010", "BN012", "CK001"}
