"""ckptdoc.guard: the bug is stopped in the first steps of training, a healthy run is not
disturbed, and TF1 train ops that skip the BN update ops are refused before the first step."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

pytestmark = pytest.mark.tf


def _data(n: int = 256) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(n, 6)) * 3 + 2).astype("float32")
    return x, (x[:, 0] > 2).astype("int64")


def _model(inference_bn: bool):  # type: ignore[no-untyped-def]
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)

    class Wrapper(keras.layers.Layer):
        def __init__(self, **kw):  # type: ignore[no-untyped-def]
            super().__init__(**kw)
            self.bn = keras.layers.BatchNormalization(name="bn_hidden")

        def call(self, h, training=None):  # type: ignore[no-untyped-def]
            # The bug: BN called with training=False inside a training step.
            return self.bn(h, training=False if inference_bn else training)

    inp = keras.Input((6,))
    h = Wrapper(name="block")(keras.layers.Dense(8)(inp))
    out = keras.layers.Dense(2)(keras.layers.ReLU()(h))
    model = keras.Model(inp, out)
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


class _Steps:
    def __init__(self) -> None:
        import keras

        outer = self

        class Count(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):  # type: ignore[no-untyped-def]
                outer.n += 1

        self.n = 0
        self.callback = Count()


def test_fit_with_bn_in_inference_mode_is_stopped_early() -> None:
    from ckptdoc.guard import BatchNormMonitor, BatchNormNotUpdatingError

    x, y = _data()
    steps = _Steps()
    model = _model(inference_bn=True)
    with pytest.raises(BatchNormNotUpdatingError) as info:
        model.fit(x, y, batch_size=16, epochs=5, verbose=0,
                  callbacks=[steps.callback, BatchNormMonitor(check_after_steps=5)])
    assert info.value.layers == ["block/bn_hidden"]
    assert "bn_hidden" in str(info.value)
    assert "training=True" in str(info.value)  # the fix, in ckptdoc rule BN002's words
    assert steps.n == 5  # stopped at the check, not after 80 steps


def _subclassed(inference_bn: bool):  # type: ignore[no-untyped-def]
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)

    class Net(keras.Model):  # TF2's default style: not built until its first call
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(8)
            self.bn = keras.layers.BatchNormalization(name="bn_sub")
            self.head = keras.layers.Dense(2)

        def call(self, x, training=None):  # type: ignore[no-untyped-def]
            h = self.bn(self.dense(x), training=False if inference_bn else training)
            return self.head(keras.ops.relu(h))

    model = Net()
    model.compile("adam", "sparse_categorical_crossentropy")
    return model


def test_subclassed_model_is_watched_from_its_first_step() -> None:
    # Before: the snapshot at on_train_begin held no variables and the bug ran all 80 steps.
    from ckptdoc.guard import BatchNormMonitor, BatchNormNotUpdatingError

    x, y = _data()
    steps = _Steps()
    with pytest.raises(BatchNormNotUpdatingError) as info:
        _subclassed(inference_bn=True).fit(
            x, y, batch_size=16, epochs=5, verbose=0,
            callbacks=[steps.callback, BatchNormMonitor(check_after_steps=5)])
    assert info.value.layers == ["bn_sub"]
    assert steps.n == 6  # the start is the end of step 1, the check 5 steps later


def test_healthy_subclassed_fit_is_not_stopped() -> None:
    from ckptdoc.guard import BatchNormMonitor

    x, y = _data()
    history = _subclassed(inference_bn=False).fit(
        x, y, batch_size=16, epochs=2, verbose=0,
        callbacks=[BatchNormMonitor(check_after_steps=5, every=True)])
    assert len(history.history["loss"]) == 2


def test_a_monitor_watching_no_bn_layer_says_so() -> None:
    keras = pytest.importorskip("keras")
    from ckptdoc.guard import BatchNormMonitor

    x, y = _data()
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(2)])
    model.compile("adam", "sparse_categorical_crossentropy")
    with pytest.warns(RuntimeWarning, match="watches no BN layer: the model has no"):
        model.fit(x, y, batch_size=16, epochs=1, verbose=0,
                  callbacks=[BatchNormMonitor(check_after_steps=2)])


def test_healthy_fit_runs_to_the_end() -> None:
    from ckptdoc.guard import BatchNormMonitor

    x, y = _data()
    steps = _Steps()
    model = _model(inference_bn=False)
    history = model.fit(x, y, batch_size=16, epochs=3, verbose=0,
                        callbacks=[steps.callback, BatchNormMonitor(check_after_steps=5,
                                                                    every=True)])
    assert len(history.history["loss"]) == 3
    assert steps.n == 48


def test_custom_loop_without_training_true() -> None:
    tf = pytest.importorskip("tensorflow")
    from ckptdoc.guard import BatchNormMonitor, BatchNormNotUpdatingError

    x, y = _data()
    model = _model(inference_bn=False)
    import keras

    opt = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    monitor = BatchNormMonitor(check_after_steps=3)
    monitor.check(model)
    with pytest.raises(BatchNormNotUpdatingError, match="bn_hidden"):
        for i in range(10):
            batch = slice(i * 16, (i + 1) * 16)
            with tf.GradientTape() as tape:
                loss = loss_fn(y[batch], model(x[batch]))  # the bug: no training=True
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))
            monitor.check(model)
    assert i == 2  # the third step raised


def _handmade_graph(wire: bool):  # type: ignore[no-untyped-def]
    tf = pytest.importorskip("tensorflow")
    v1 = tf.compat.v1
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 6], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        w = v1.get_variable("dense/w", [6, 4])
        h = tf.matmul(x, w)
        with v1.variable_scope("norm"):
            scale = v1.get_variable("scale", [4], initializer=v1.ones_initializer())
            offset = v1.get_variable("offset", [4], initializer=v1.zeros_initializer())
            pop_mean = v1.get_variable("pop_mean", [4], initializer=v1.zeros_initializer(),
                                       trainable=False)
            pop_var = v1.get_variable("pop_var", [4], initializer=v1.ones_initializer(),
                                      trainable=False)
            mean, var = tf.nn.moments(h, [0])
            updates = [v1.assign(pop_mean, pop_mean * 0.9 + mean * 0.1),
                       v1.assign(pop_var, pop_var * 0.9 + var * 0.1)]  # a hand-made list
            h = tf.nn.batch_normalization(h, mean, var, offset, scale, 1e-3)
        logits = tf.matmul(tf.nn.relu(h), v1.get_variable("head/w", [4, 2]))
        loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
        if wire:
            with tf.control_dependencies(updates):
                train_op = v1.train.AdamOptimizer(0.01).minimize(loss)
        else:
            train_op = v1.train.AdamOptimizer(0.01).minimize(loss)
    return g, train_op


def test_tf1_train_op_without_update_ops_raises() -> None:
    from ckptdoc.guard import UpdateOpsNotRunError, assert_update_ops

    graph, train_op = _handmade_graph(wire=False)
    with pytest.raises(UpdateOpsNotRunError) as info:
        assert_update_ops(train_op)
    assert info.value.layers == ["norm"]
    assert "control_dependencies" in str(info.value)


def test_tf1_wired_train_op_passes() -> None:
    from ckptdoc.guard import assert_update_ops

    graph, train_op = _handmade_graph(wire=True)
    assert_update_ops(train_op, graph)


def test_session_run_hook_refuses_before_the_first_step() -> None:
    tf = pytest.importorskip("tensorflow")
    from ckptdoc.guard import UpdateOpsCheckHook, UpdateOpsNotRunError

    graph, train_op = _handmade_graph(wire=False)
    with graph.as_default():
        with pytest.raises(UpdateOpsNotRunError, match="norm"):
            with tf.compat.v1.train.MonitoredSession(hooks=[UpdateOpsCheckHook(train_op)]):
                pass


def test_tf1_layers_update_ops_collection() -> None:
    # tf.compat.v1.layers needs tf-keras (TF_USE_LEGACY_KERAS=1, before TF is imported).
    pytest.importorskip("tf_keras")
    script = textwrap.dedent("""
        import tensorflow as tf
        from ckptdoc.guard import UpdateOpsNotRunError, assert_update_ops
        v1 = tf.compat.v1
        v1.disable_eager_execution()
        x = v1.placeholder(tf.float32, [None, 4, 4, 2])
        h = v1.layers.batch_normalization(v1.layers.conv2d(x, 3, 3), training=True)
        loss = tf.reduce_mean(tf.square(h))
        bad = v1.train.AdamOptimizer(0.01).minimize(loss)
        try:
            assert_update_ops(bad)
        except UpdateOpsNotRunError as exc:
            print("REFUSED", exc.layers)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            good = v1.train.GradientDescentOptimizer(0.1).minimize(loss)
        assert_update_ops(good)
        print("PASSED")
    """)
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "REFUSED ['batch_normalization']" in out.stdout
    assert "PASSED" in out.stdout


def test_importing_the_guard_imports_no_framework() -> None:
    code = ("import sys, ckptdoc.guard; "
            "print(any(m in sys.modules for m in ('tensorflow', 'keras', 'jax', 'torch')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "False"


def test_data_check_at_the_end_of_fit() -> None:
    # Issue 26: the training guard compares the statistics with data the model will see.
    import warnings
    from pathlib import Path

    keras = pytest.importorskip("keras")
    from ckptdoc.guard import BatchNormMonitor

    samples = Path(__file__).resolve().parent.parent / "sample_ckpts"
    with np.load(samples / "data" / "calib.npz") as z:
        x, y = z["x"], z["y"]
    model = keras.saving.load_model(samples / "keras3_healthy.keras")
    model.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    for data, expect in ((x, "agrees"), (x * 255, "mismatch")):
        monitor = BatchNormMonitor(check_after_steps=1, data_check=data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(x[:32], y[:32], batch_size=32, epochs=1, verbose=0,
                      callbacks=[monitor])
        assert monitor.data_comparison.worst == expect
        said = [str(w.message) for w in caught if "BN012" in str(w.message)]
        assert bool(said) == (expect == "mismatch")
        if said:
            assert "0-255 pixels" in said[0]
