"""Keras 3 classes of the files in this folder (scripts/make_evidence_testdata.py builds them;
tests import this module to load the files with Keras and compare with ckptdoc)."""

from __future__ import annotations

from typing import Any

import keras

L = keras.layers


@keras.saving.register_keras_serializable(package="evidence")
class ConvBNAct(L.Layer):
    """BN as an attribute of a custom layer: the weights file stores it as `.../norm/vars`."""

    def __init__(self, filters: int, **kw: Any) -> None:
        super().__init__(**kw)
        self.filters = filters
        self.conv = L.Conv2D(filters, 3, padding="same", use_bias=False)
        self.norm = L.BatchNormalization()
        self.act = L.ReLU()

    def call(self, h: Any, training: Any = None) -> Any:
        return self.act(self.norm(self.conv(h), training=training))

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="evidence")
class Block(L.Layer):
    """Two custom layers inside a custom layer: BN two attribute levels down."""

    def __init__(self, **kw: Any) -> None:
        super().__init__(**kw)
        self.first = ConvBNAct(4)
        self.second = ConvBNAct(8)

    def call(self, h: Any, training: Any = None) -> Any:
        return self.second(self.first(h, training=training), training=training)


class Subclassed(keras.Model):
    """BN inside a subclassed model (no layer list in any config)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = L.Conv2D(4, 3, padding="same", use_bias=False)
        self.bn = L.BatchNormalization()
        self.pool = L.GlobalAveragePooling2D()
        self.head = L.Dense(4)

    def call(self, h: Any, training: Any = None) -> Any:
        return self.head(self.pool(keras.ops.relu(self.bn(self.conv(h), training=training))))


def functional(body: Any) -> keras.Model:
    inp = keras.Input((8, 8, 1))
    out = L.Dense(4)(L.GlobalAveragePooling2D()(body(inp)))
    return keras.Model(inp, out)


def custom_layer_model() -> keras.Model:
    return functional(lambda h: ConvBNAct(8, name="block2")(ConvBNAct(4, name="stem")(h)))


def nested_block_model() -> keras.Model:
    return functional(lambda h: Block(name="block")(h))
