"""Model builders for the recalibration tests (also used as `--model file.py:function`).

No tests here; Keras is imported inside the functions so collecting this file stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def make_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """3 classes of 8x8 images, a bright patch per class, offset and scaled so 0/1 stats fail."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 1, (n, 8, 8, 1))
    for c in range(3):
        x[y == c, 2 * c : 2 * c + 3, 2 * c : 2 * c + 3, 0] += 3.0
    return (x * 3 + 4).astype("float32"), y


def classifier() -> Any:
    import keras

    keras.utils.set_random_seed(0)
    inp = keras.Input((8, 8, 1))
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv1")(inp)
    h = keras.layers.BatchNormalization(name="bn1")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(h)
    h = keras.layers.BatchNormalization(name="bn2")(h)
    h = keras.layers.ReLU()(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    h = keras.layers.Dropout(0.3)(h)
    out = keras.layers.Dense(3, activation="softmax", name="head")(h)
    return keras.Model(inp, out, name="classifier")


def exotic() -> Any:
    """Every BN variant reads the raw input directly, so NumPy can check each one exactly."""
    import keras

    keras.utils.set_random_seed(1)
    inp = keras.Input((4, 5, 6))
    nested = keras.Sequential(
        [
            keras.Input((4, 5, 6)),
            keras.Sequential(
                [
                    keras.Input((4, 5, 6)),
                    keras.layers.BatchNormalization(
                        axis=1, center=False, scale=False, name="bn_axis1"
                    ),
                ],
                name="deeper",
            ),
        ],
        name="nested",
    )
    frozen = keras.layers.BatchNormalization(name="bn_frozen")
    frozen.trainable = False
    branches = [
        nested(inp),
        keras.layers.TimeDistributed(frozen, name="td")(inp),
        keras.layers.BatchNormalization(axis=-2, renorm=True, name="bn_renorm")(inp),
        keras.layers.BatchNormalization(synchronized=True, name="bn_sync")(inp),
    ]
    flat = keras.layers.Flatten()(inp)
    dense = keras.layers.Dense(3, name="pre_dropout")(flat)
    dropped = keras.layers.Dropout(0.9)(dense)
    branches_flat = [keras.layers.Flatten()(b) for b in branches]
    after_dropout = keras.layers.BatchNormalization(name="bn_after_dropout")(dropped)
    h = keras.layers.Concatenate()([*branches_flat, after_dropout])
    out = keras.layers.Dense(2, name="out")(h)
    return keras.Model(inp, out, name="exotic")


def two_inputs() -> Any:
    import keras

    a = keras.Input((3,), name="a")
    b = keras.Input((2,), name="b")
    h = keras.layers.Concatenate()([a, b])
    h = keras.layers.BatchNormalization(name="bn")(h)
    return keras.Model({"a": a, "b": b}, keras.layers.Dense(1)(h))


def rgb() -> Any:
    import keras

    inp = keras.Input((8, 8, 3))
    h = keras.layers.BatchNormalization(name="bn_rgb")(inp)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inp, keras.layers.Dense(2)(h))


def with_lambda() -> Any:
    import keras

    inp = keras.Input((4,))
    h = keras.layers.Lambda(lambda t: t * 2.0, name="double")(inp)
    h = keras.layers.BatchNormalization()(h)
    return keras.Model(inp, keras.layers.Dense(1)(h))


# -- data functions for --data module:function ---------------------------------------------


def tuple_batches() -> Any:
    x, y = make_data(96, 5)
    return [(x[i : i + 32], y[i : i + 32]) for i in range(0, 96, 32)]


def dict_batches() -> Any:
    rng = np.random.default_rng(7)
    for _ in range(3):
        yield {
            "a": rng.normal(2, 3, (10, 3)).astype("float32"),
            "b": rng.normal(-1, 1, (10, 2)).astype("float32"),
        }


def tf_dataset() -> Any:
    import tensorflow as tf

    x, y = make_data(96, 5)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(40)
