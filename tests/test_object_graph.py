"""Layers from TrackableObjectGraphs: grouping goes through the graph, never key prefixes."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptdoc.formats import open_checkpoint
from ckptdoc.formats.object_graph import build_layers
from ckptdoc.formats.proto import (
    ObjectReference,
    SerializedTensor,
    SlotVariableReference,
    TrackableObject,
    decode_object_graph,
)
from ckptdoc.groups import find_groups
from tests import bundle_writer as bw

DATA = Path(__file__).parent / "data" / "bundle"
REAL = Path(__file__).parent / "data" / "real" / "basic-pitch" / "nmp"
BN = {"gamma", "beta", "moving_mean", "moving_variance"}


def _by_name(path: Path) -> dict[str, dict[str, str]]:
    with open_checkpoint(path) as ckpt:
        assert ckpt.layers is not None
        return {layer.name: dict(layer.members) for layer in ckpt.layers}


def test_keras3_object_checkpoint_groups_through_the_graph() -> None:
    layers = _by_name(DATA / "tf2_keras3")
    assert set(layers) == {"dense", "bn", "head"}
    bn = layers["bn"]
    assert set(bn) == BN
    # The trap: gamma/beta are saved under the optimizer, moving stats under the layer.
    assert bn["gamma"].startswith("optimizer/_trainable_variables/")
    assert bn["moving_mean"].startswith("model/_operations/")
    assert set(layers["dense"]) == {"kernel", "bias"}  # Keras 3 `_kernel` reported as kernel
    every_member = {k for m in layers.values() for k in m.values()}
    assert not any("optimizer/_variables" in k for k in every_member)


def test_tf_keras_save_weights_and_object_checkpoint() -> None:
    sw = _by_name(DATA / "tfkeras_save_weights")
    assert set(sw["bn"]) == BN
    assert (
        sw["bn"]["moving_variance"]
        == "layer_with_weights-1/moving_variance/.ATTRIBUTES/VARIABLE_VALUE"
    )
    obj = _by_name(DATA / "tfkeras_object")
    # Name from the variables' full_name attribute (tf-keras auto-names the layer).
    assert set(obj["batch_normalization"]) == BN
    assert not any(name.startswith("optimizer") for name in obj)


def test_savedmodel_variables() -> None:
    layers = _by_name(DATA / "savedmodel" / "model")
    assert set(layers["bn"]) == BN


def test_keras_metadata_gives_classes_and_configs() -> None:
    with open_checkpoint(DATA / "tfkeras_model_save" / "model") as ckpt:
        layers = {layer.name: layer for layer in ckpt.layers or []}
    assert layers["bn"].class_name == "BatchNormalization"
    assert layers["bn"].config["epsilon"] == pytest.approx(1e-3)
    assert layers["bn"].config["axis"] in (-1, [1], 1)
    assert layers["dense"].class_name == "Dense"


def test_basic_pitch_has_three_bn_layers_with_classes() -> None:
    with open_checkpoint(REAL) as ckpt:
        assert ckpt.format == "savedmodel"
        bns = [
            layer
            for layer in ckpt.layers or []
            if {"moving_mean", "moving_variance"} <= set(layer.members)
        ]
        assert len(bns) == 3
        assert {layer.class_name for layer in bns} == {"BatchNormalization"}
        assert all(layer.config.get("epsilon") is not None for layer in bns)
        for layer in bns:
            assert set(layer.members) == BN
            assert all(k in ckpt.tensors for k in layer.members.values())
        # Optimizer slot keys also end in VARIABLE_VALUE: none may leak into layers.
        assert not any(
            ".OPTIMIZER_SLOT" in k for layer in ckpt.layers or [] for k in layer.members.values()
        )


def test_tf1_checkpoint_has_no_layers() -> None:
    with open_checkpoint(DATA / "tf1_bn" / "model.ckpt") as ckpt:
        assert ckpt.layers is None


# --- hand-built graphs -----------------------------------------------------------------------


def _var(key: str, full_name: str = "") -> TrackableObject:
    return TrackableObject((), (SerializedTensor("VARIABLE_VALUE", full_name, key),), ())


def _obj(
    *children: tuple[int, str], slots: tuple[SlotVariableReference, ...] = ()
) -> TrackableObject:
    return TrackableObject(tuple(ObjectReference(i, n) for i, n in children), (), slots)


def test_slot_variables_optimizer_and_relisting_lists_are_not_layers() -> None:
    nodes = [
        _obj((1, "net"), (5, "optimizer"), (6, "variables")),  # 0 root
        _obj((2, "block"), (0, "root")),  # 1 model (with a self-loop back to root)
        _obj((3, "gamma"), (4, "moving_mean")),  # 2 layer
        _var("net/block/gamma/.ATTRIBUTES/VARIABLE_VALUE"),  # 3
        _var("net/block/moving_mean/.ATTRIBUTES/VARIABLE_VALUE"),  # 4
        _obj((7, "iter"), slots=(SlotVariableReference(3, "m", 8),)),  # 5 optimizer
        _obj((3, "0"), (4, "1")),  # 6 a list re-listing the same variables
        _var("optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE"),  # 7
        _var("net/block/gamma/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE"),  # 8
    ]
    keys = {a.checkpoint_key for n in nodes for a in n.attributes}
    layers = build_layers(nodes, keys)
    assert [(layer.name, dict(layer.members)) for layer in layers] == [
        (
            "net/block",
            {
                "gamma": "net/block/gamma/.ATTRIBUTES/VARIABLE_VALUE",
                "moving_mean": "net/block/moving_mean/.ATTRIBUTES/VARIABLE_VALUE",
            },
        )
    ]


def test_clashing_full_names_fall_back_to_graph_paths() -> None:
    nodes = [
        _obj((1, "a"), (3, "b")),
        _obj((2, "gamma")),
        _var("a/gamma/.ATTRIBUTES/VARIABLE_VALUE", "bn/gamma"),
        _obj((4, "gamma")),
        _var("b/gamma/.ATTRIBUTES/VARIABLE_VALUE", "bn/gamma"),
    ]
    keys = {a.checkpoint_key for n in nodes for a in n.attributes}
    assert [layer.name for layer in build_layers(nodes, keys)] == ["a", "b"]


def test_object_graph_proto_roundtrip() -> None:
    attr = bw.field_bytes(1, b"VARIABLE_VALUE") + bw.field_bytes(2, b"bn/gamma")
    attr += bw.field_bytes(3, b"k/.ATTRIBUTES/VARIABLE_VALUE")
    child = bw.field_varint(1, 1) + bw.field_bytes(2, b"gamma")
    slot = bw.field_varint(1, 1) + bw.field_bytes(2, b"m") + bw.field_varint(3, 2)
    graph = bw.field_bytes(1, bw.field_bytes(1, child) + bw.field_bytes(3, slot))
    graph += bw.field_bytes(1, bw.field_bytes(2, attr))
    nodes = decode_object_graph(graph)
    assert nodes[0].children == (ObjectReference(1, "gamma"),)
    assert nodes[0].slot_variables == (SlotVariableReference(1, "m", 2),)
    assert nodes[1].attributes == (
        SerializedTensor("VARIABLE_VALUE", "bn/gamma", "k/.ATTRIBUTES/VARIABLE_VALUE"),
    )


@pytest.mark.tf
def test_object_graph_matches_tensorflow_proto() -> None:
    pytest.importorskip("tensorflow")
    import tensorflow as tf
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = DATA / "tf2_keras3" / "ckpt"
    raw = tf.compat.v1.train.NewCheckpointReader(str(prefix)).get_tensor(
        "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
    ref = trackable_object_graph_pb2.TrackableObjectGraph()
    ref.ParseFromString(raw)
    ours = decode_object_graph(raw)
    assert len(ours) == len(ref.nodes)
    for a, b in zip(ours, ref.nodes, strict=True):
        assert [(c.node_id, c.local_name) for c in a.children] == [
            (c.node_id, c.local_name) for c in b.children
        ]
        assert [(t.name, t.full_name, t.checkpoint_key) for t in a.attributes] == [
            (t.name, t.full_name, t.checkpoint_key) for t in b.attributes
        ]


def test_keras3_export_layers_come_from_savedmodel_variable_names() -> None:
    # model.export() tracks only numbered variable lists, with a copy of every variable under
    # `_all_variables/N`; the layer names live in saved_model.pb's SavedVariable names.
    layers = _by_name(DATA / "keras3_export" / "model")
    assert set(layers) == {"dense", "bn", "head"}
    assert set(layers["bn"]) == BN
    assert all(k.startswith("variables/") for k in layers["bn"].values())  # first copy wins
    with open_checkpoint(DATA / "keras3_export" / "model") as ckpt:
        (group,) = find_groups(ckpt)
        assert group.name == "bn" and group.present == [
            "gamma",
            "beta",
            "moving_mean",
            "moving_variance",
        ]
