"""Model / graph builders for the bundle-recalibration tests and their data generator.

Used as `--model tests/data/tf1_recal/models.py:FUNCTION`, and by
scripts/make_tf1_recal_testdata.py so the committed checkpoints match these builders exactly.
"""

from __future__ import annotations

from typing import Any


def keras_net() -> Any:
    """The Keras 3 net of sample_ckpts/tf2_* (BN names bn_conv1, bn_conv2, bn_head)."""
    import keras

    L = keras.layers  # noqa: N806
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", use_bias=False),
            L.BatchNormalization(name="bn_conv1"),
            L.ReLU(),
            L.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
            L.BatchNormalization(name="bn_conv2"),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(8, use_bias=False),
            L.BatchNormalization(name="bn_head"),
            L.ReLU(),
            L.Dense(4),
        ]
    )


def moments_graph(switch: str = "is_training", default: bool = False, dropout: float = 0.0) -> Any:
    """Hand-made TF1 BN with tf.nn.moments, a tf.cond on `is_training` and moving averages in
    UPDATE_OPS; builds into the default graph and returns the logits."""
    import tensorflow as tf

    v1 = tf.compat.v1
    x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
    is_training = v1.placeholder_with_default(default, [], name=switch)

    def bn(h: Any, axes: list[int], scope: str) -> Any:
        c = h.shape[-1]
        with v1.variable_scope(scope):
            gamma = v1.get_variable("gamma", [c], initializer=v1.ones_initializer())
            beta = v1.get_variable("beta", [c], initializer=v1.zeros_initializer())
            mm = v1.get_variable(
                "moving_mean", [c], initializer=v1.zeros_initializer(), trainable=False
            )
            mv = v1.get_variable(
                "moving_variance", [c], initializer=v1.ones_initializer(), trainable=False
            )
            mean, var = tf.nn.moments(h, axes)
            for v, s in ((mm, mean), (mv, var)):
                v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, v.assign_sub((v - s) * 0.01))
            m, s = tf.cond(
                is_training, lambda: (mean, var), lambda: (mm.read_value(), mv.read_value())
            )
            return tf.nn.batch_normalization(h, m, s, beta, gamma, 1e-3)

    init = v1.glorot_uniform_initializer(seed=3)
    w1 = v1.get_variable("conv1/weights", [3, 3, 1, 4], initializer=init)
    h = tf.nn.relu(bn(tf.nn.conv2d(x, w1, 1, "SAME"), [0, 1, 2], "conv1/bn"))
    if dropout:  # the training switch drives dropout too, as in most TF1 code
        h = tf.cond(is_training, lambda: tf.nn.dropout(h, rate=dropout, seed=5), lambda: h)
    h = tf.reduce_mean(h, axis=[1, 2])
    w2 = v1.get_variable("fc/weights", [4, 8], initializer=init)
    h = tf.nn.relu(bn(tf.matmul(h, w2), [0], "fc/bn"))
    w3 = v1.get_variable("logits/weights", [8, 4], initializer=init)
    b3 = v1.get_variable("logits/biases", [4], initializer=v1.zeros_initializer())
    return tf.identity(tf.matmul(h, w3) + b3, name="logits")


def make_data(n: int = 1024, seed: int = 0) -> tuple[Any, Any]:
    """Same task as scripts/make_sample_ckpts.py `make_data` (kept identical on purpose)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    yy, xx = np.mgrid[0:8, 0:8]
    blobs = np.stack(
        [
            np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 3.0)
            for cy, cx in [(2, 2), (2, 5), (5, 2), (5, 5)]
        ]
    )
    x = rng.normal(0.0, 0.4, (n, 8, 8, 1)) + 2.0 * blobs[y][..., None]
    x = 3.0 * x + 2.0
    return x.astype(np.float32), y.astype(np.int64)


def slim_graph() -> Any:
    """slim-style net (`scope/BatchNorm/{beta,moving_*}`, no gamma, decay 0.999) built with
    tf.compat.v1.layers; needs TF_USE_LEGACY_KERAS=1. Returns the logits."""
    import tensorflow as tf

    v1 = tf.compat.v1
    x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
    is_training = v1.placeholder_with_default(False, [], name="is_training")

    def bn(h: Any) -> Any:
        return v1.layers.batch_normalization(
            h, scale=False, momentum=0.999, epsilon=1e-3, training=is_training, name="BatchNorm"
        )

    init = v1.glorot_uniform_initializer(seed=5)
    with v1.variable_scope("conv1"):
        w = v1.get_variable("weights", [3, 3, 1, 4], initializer=init)
        h = tf.nn.relu(bn(tf.nn.conv2d(x, w, 1, "SAME")))
    h = tf.reduce_mean(h, axis=[1, 2])
    with v1.variable_scope("logits"):
        w = v1.get_variable("weights", [4, 4], initializer=init)
        b = v1.get_variable("biases", [4], initializer=v1.zeros_initializer())
        return tf.identity(tf.matmul(h, w) + b, name="logits")


def unrecognised_switch_graph() -> Any:
    """The moments graph whose switch has a name no convention knows, left True by default:
    evaluation then runs BN with batch statistics too."""
    return moments_graph(switch="use_batch_stats", default=True)


def dropout_graph() -> Any:
    """The moments graph with dropout after the first BN block, on the same switch."""
    return moments_graph(dropout=0.5)
