"""BN group discovery across naming conventions (no files needed)."""

from __future__ import annotations

import numpy as np
import pytest

from ckptdoc.checkpoint import LayerNode
from ckptdoc.groups import find_groups, is_bn_class, role_of
from tests.memory import MemoryCheckpoint

C = np.zeros(4, np.float32)


def names(values: dict, layers=None) -> dict[str, dict]:
    return {g.name: dict(g.members) for g in find_groups(MemoryCheckpoint(values, layers))}


def test_tf1_layers_convention_with_optimizer_slots_and_ema():
    keys = {
        "net/batch_normalization/gamma": C,
        "net/batch_normalization/beta": C,
        "net/batch_normalization/moving_mean": C,
        "net/batch_normalization/moving_variance": C,
        "net/batch_normalization/gamma/Adam": C,
        "net/batch_normalization/gamma/Adam_1": C,
        "net/batch_normalization/moving_mean/ExponentialMovingAverage": C,
        "net/conv2d/kernel": np.zeros((3, 3, 1, 4)),
        "beta1_power": np.float32(0.9),
        "beta2_power": np.float32(0.9),
    }
    groups = names(keys)
    assert list(groups) == ["net/batch_normalization"]
    assert groups["net/batch_normalization"]["gamma"] == "net/batch_normalization/gamma"


def test_slim_without_gamma_and_zero_debias_helpers():
    keys = {
        "block1/BatchNorm/beta": C,
        "block1/BatchNorm/moving_mean": C,
        "block1/BatchNorm/moving_variance": C,
        "block1/BatchNorm/moving_mean/biased": C,
        "block1/BatchNorm/moving_mean/local_step": np.int64(0),
    }
    (group,) = find_groups(MemoryCheckpoint(keys))
    assert group.name == "block1/BatchNorm"
    assert group.members["gamma"] is None
    assert set(group.extras) == {"moving_mean/biased", "moving_mean/local_step"}


def test_trainable_only_saver_group_still_found_when_stats_missing():
    groups = names({"model/bn1/gamma": C, "model/bn1/beta": C, "model/dense/kernel": C})
    assert groups == {
        "model/bn1": {"gamma": "model/bn1/gamma", "beta": "model/bn1/beta",
                      "moving_mean": None, "moving_variance": None}
    }


def test_layer_norm_gamma_beta_is_not_a_group():
    assert names({"enc/layer_normalization/gamma": C, "enc/layer_normalization/beta": C}) == {}
    assert names({"enc/LayerNorm/gamma": C, "enc/LayerNorm/beta": C}) == {}


def test_hand_made_scope_with_moving_stats_is_a_group():
    groups = names({"my_norm/moving_mean": C, "my_norm/moving_variance": C, "my_norm/beta": C})
    assert list(groups) == ["my_norm"]


def test_object_keys_without_graph_strip_attribute_suffix_and_skip_slots():
    sfx = "/.ATTRIBUTES/VARIABLE_VALUE"
    keys = {
        "layer_with_weights-1/moving_mean" + sfx: C,
        "layer_with_weights-1/moving_variance" + sfx: C,
        "layer_with_weights-1/gamma/.OPTIMIZER_SLOT/optimizer/m" + sfx: C,
        "optimizer/_trainable_variables/3" + sfx: C,
    }
    groups = names(keys)
    assert list(groups) == ["layer_with_weights-1"]


def test_layer_nodes_use_class_when_known():
    layers = [
        LayerNode(
            "bn_head",
            {"vars/0": "a", "gamma": "g", "moving_mean": "m", "moving_variance": "v"},
            "BatchNormalization",
        ),
        LayerNode("norm", {"mean": "nm", "variance": "nv", "count": "nc"}, "Normalization"),
        LayerNode("ln", {"gamma": "lg", "beta": "lb"}, "LayerNormalization"),
        LayerNode("sync", {"moving_mean": "sm", "moving_variance": "sv"}, "SyncBatchNormalization"),
    ]
    values = {k: C for k in ["a", "g", "m", "v", "nm", "nv", "nc", "lg", "lb", "sm", "sv"]}
    groups = names(values, layers)
    assert list(groups) == ["bn_head", "sync"]


def test_object_graph_layer_with_stats_under_optimizer_keys():
    # Keras 3 + optimizer: gamma/beta keys live under optimizer/_trainable_variables/N
    layers = [LayerNode("model/layer_with_weights-0", {
        "gamma": "optimizer/_trainable_variables/0/.ATTRIBUTES/VARIABLE_VALUE",
        "beta": "optimizer/_trainable_variables/1/.ATTRIBUTES/VARIABLE_VALUE",
        "moving_mean": "model/layer_with_weights-0/moving_mean/.ATTRIBUTES/VARIABLE_VALUE",
        "moving_variance": "model/layer_with_weights-0/moving_variance/.ATTRIBUTES/VARIABLE_VALUE",
    })]
    values = {k: C for k in layers[0].members.values()}
    (group,) = find_groups(MemoryCheckpoint(values, layers))
    assert group.present == ["gamma", "beta", "moving_mean", "moving_variance"]


def test_unknown_class_dense_layer_is_not_a_group():
    layers = [LayerNode("dense", {"kernel": "k", "bias": "b"})]
    assert find_groups(MemoryCheckpoint({"k": C, "b": C}, layers)) == []


@pytest.mark.parametrize(
    "name, role",
    [("gamma", "gamma"), ("bn/moving_variance", "moving_variance"),
     ("batchnormalization_1_running_std", "moving_variance"), ("running_var", "moving_variance"),
     ("mean", None), ("Adam", None), ("kernel", None)],
)
def test_role_of(name, role):
    assert role_of(name) == role


@pytest.mark.parametrize(
    "cls, expected",
    [("BatchNormalization", True), ("SyncBatchNormalization", True), ("BatchNormalizationV1", True),
     ("keras.layers.BatchNormalization", True), ("LayerNormalization", False),
     ("Normalization", False), ("GroupNormalization", False)],
)
def test_is_bn_class(cls, expected):
    assert is_bn_class(cls) is expected
