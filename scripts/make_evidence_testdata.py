"""Regenerate tests/data/evidence/: files where only the file's structure (a graph, a Keras
variable layout, an optimizer step count) tells the truth about batch norm. Names alone fail
on every one of them.

Run from the repository root (tensorflow-cpu, keras 3, tf-keras):

    .venv/bin/python scripts/make_evidence_testdata.py

Keras 3 (`keras3` part, TF backend):
- `custom_layer.keras` / `.weights.h5`: BN inside a custom layer (`ConvBNAct.norm`), two
  blocks, trained 320 steps with `fit`: healthy;
- `custom_layer_reset.keras`: the same, moving stats reset to 0 / 1 after training (BN002);
- `subclassed_reset.weights.h5`: BN inside a subclassed `keras.Model`, trained, stats reset;
- `nested_block.weights.h5`: a custom block holding two custom layers holding BN, trained;
- `untrained.keras`: saved right after building (BN008);
- `barely_moved.keras`: BN momentum 0.999, 8 `fit` steps, optimizer saved (BN005 from the
  step count: 0.999**8 = 99% of each moving statistic is still its initial value);
- `many_bn.keras`: 12 BN layers (`batch_normalization` ... `_11`), to check model order.
TF1 graphs (`tf1` part, tf.compat.v1 graph mode with tf-keras):
- `tf1_handwritten/`: a much-copied tutorial's BN, variables `scale` / `offset` / `pop_mean` /
  `pop_var`, `tf.cond` on `is_training`, updates in the training branch: trained, healthy;
- `tf1_handwritten_trainable_only/`: the same training, `Saver(var_list=trainable)`: no pop_*;
- `tf1_caffe_style/`: caffe-tensorflow-style inference graph (`FusedBatchNorm`,
  `is_training=False`), variables `mean` / `variance` / `scale` / `offset`, stats at 0 / 1;
- `tf1_keras_learning_phase/`: tf.keras layers in a TF1 graph trained without ever feeding
  `keras_learning_phase` (BN in inference mode, stats 0 / 1 by design); the `.meta` is the
  serving graph (no train op), as an Estimator export leaves it.
- `tf1_savedmodel/` (`tf1_savedmodel` part): a SavedModelBuilder export of a hand-written BN
  net trained without its UPDATE_OPS: only `saved_model.pb`'s graph names `pop_mean` /
  `pop_var` as BN statistics, and it proves the train op skips their updates.
Keras 1 (`keras1` part, h5py): `keras1_uniquified.h5`, TF-uniquified names
(`Normalize/Normalize_running_mean_2:0`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "evidence"


def _data(n: int = 256, seed: int = 0):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, 8, 8, 1)) * 2.0 + 3.0).astype("float32")
    y = rng.integers(0, 4, n)
    return x, y


def make_keras3() -> None:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import keras
    import numpy as np

    sys.path.insert(0, str(OUT))
    from models import Subclassed, custom_layer_model, functional, nested_block_model

    L = keras.layers  # noqa: N806
    keras.utils.set_random_seed(0)
    x, y = _data()

    def fit(model, steps: int) -> None:  # type: ignore[no-untyped-def]
        model.compile("adam", "sparse_categorical_crossentropy")
        epochs = max(1, steps // 16)
        n = (steps // epochs) * 16
        model.fit(x[:n], y[:n], batch_size=16, epochs=epochs, verbose=0, shuffle=False)

    def reset(model) -> None:  # type: ignore[no-untyped-def]
        for var in model.non_trainable_variables:
            if var.path.endswith("moving_mean"):
                var.assign(np.zeros(var.shape, "float32"))
            elif var.path.endswith("moving_variance"):
                var.assign(np.ones(var.shape, "float32"))

    custom = custom_layer_model()
    fit(custom, 320)
    custom.save(OUT / "custom_layer.keras")
    custom.save_weights(OUT / "custom_layer.weights.h5")
    reset(custom)
    custom.save(OUT / "custom_layer_reset.keras")

    sub = Subclassed()
    sub(x[:2])
    fit(sub, 320)
    reset(sub)
    sub.save_weights(OUT / "subclassed_reset.weights.h5")

    nested = nested_block_model()
    fit(nested, 320)
    nested.save_weights(OUT / "nested_block.weights.h5")

    untrained = functional(lambda h: L.ReLU()(L.BatchNormalization()(L.Conv2D(4, 3)(h))))
    untrained.save(OUT / "untrained.keras")

    slow = functional(
        lambda h: L.ReLU()(L.BatchNormalization(momentum=0.999)(L.Conv2D(4, 3)(h)))
    )
    fit(slow, 8)
    slow.save(OUT / "barely_moved.keras")

    layers = [keras.Input((6,))]
    for _ in range(12):
        layers += [L.Dense(6), L.BatchNormalization()]
    many = keras.Sequential(layers)
    many.save(OUT / "many_bn.keras")


def make_tf1() -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    x_all, y_all = _data(512)
    cfg = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)

    def handwritten_bn(h, is_training, decay=0.9):  # type: ignore[no-untyped-def]
        # The tutorial's code, names and all.
        c = h.shape[-1]
        scale = v1.get_variable("scale", [c], initializer=v1.ones_initializer())
        offset = v1.get_variable("offset", [c], initializer=v1.zeros_initializer())
        pop_mean = v1.get_variable("pop_mean", [c], initializer=v1.zeros_initializer(),
                                   trainable=False)
        pop_var = v1.get_variable("pop_var", [c], initializer=v1.ones_initializer(),
                                  trainable=False)

        def train():  # type: ignore[no-untyped-def]
            batch_mean, batch_var = tf.nn.moments(h, list(range(len(h.shape) - 1)))
            train_mean = v1.assign(pop_mean, pop_mean * decay + batch_mean * (1 - decay))
            train_var = v1.assign(pop_var, pop_var * decay + batch_var * (1 - decay))
            with tf.control_dependencies([train_mean, train_var]):
                return tf.nn.batch_normalization(h, batch_mean, batch_var, offset, scale, 1e-3)

        def infer():  # type: ignore[no-untyped-def]
            return tf.nn.batch_normalization(h, pop_mean, pop_var, offset, scale, 1e-3)

        return tf.cond(is_training, train, infer)

    def handwritten_net(x, is_training):  # type: ignore[no-untyped-def]
        init = v1.glorot_uniform_initializer(seed=1)
        with v1.variable_scope("conv1"):
            w = v1.get_variable("w", [3, 3, 1, 4], initializer=init)
            h = tf.nn.relu(handwritten_bn(tf.nn.conv2d(x, w, 1, "SAME"), is_training))
        h = tf.reduce_mean(h, axis=[1, 2])
        with v1.variable_scope("fc"):
            w = v1.get_variable("w", [4, 8], initializer=init)
            h = tf.nn.relu(handwritten_bn(tf.matmul(h, w), is_training))
        with v1.variable_scope("logits"):
            w = v1.get_variable("w", [8, 4], initializer=init)
            return tf.matmul(h, w)

    for name, trainable_only in (("tf1_handwritten", False),
                                 ("tf1_handwritten_trainable_only", True)):
        out = OUT / name
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir(parents=True)
        g = tf.Graph()
        with g.as_default():
            v1.set_random_seed(0)
            x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
            y = v1.placeholder(tf.int64, [None], name="y")
            is_training = v1.placeholder(tf.bool, [], name="is_training")
            logits = handwritten_net(x, is_training)
            loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
            step = v1.train.get_or_create_global_step()
            train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
            var_list = v1.trainable_variables() if trainable_only else None
            saver = v1.train.Saver(var_list=var_list)
            with v1.Session(graph=g, config=cfg) as sess:
                sess.run(v1.global_variables_initializer())
                for i in range(60):
                    sl = slice((i * 32) % 512, (i * 32) % 512 + 32)
                    sess.run(train_op, {x: x_all[sl], y: y_all[sl], is_training: True})
                saver.save(sess, str(out / "model.ckpt"))

    # caffe-tensorflow style: an inference graph of converted weights, fused BN.
    out = OUT / "tf1_caffe_style"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    g = tf.Graph()
    with g.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="data")
        rng = np.random.default_rng(5)
        h = x
        for i, c in enumerate((4, 8), start=1):
            with v1.variable_scope(f"conv{i}"):
                w = v1.get_variable("weights", initializer=rng.normal(
                    size=(3, 3, int(h.shape[-1]), c)).astype("float32"))
                h = tf.nn.conv2d(h, w, 1, "SAME")
            with v1.variable_scope(f"bn{i}"):
                scale = v1.get_variable("scale", initializer=rng.uniform(0.5, 1.5, c)
                                        .astype("float32"))
                offset = v1.get_variable("offset", initializer=rng.normal(size=c)
                                         .astype("float32"))
                mean = v1.get_variable("mean", initializer=np.zeros(c, "float32"))
                variance = v1.get_variable("variance", initializer=np.ones(c, "float32"))
                h, _, _ = v1.nn.fused_batch_norm(h, scale, offset, mean, variance, 1e-5,
                                                 is_training=False)
                h = tf.nn.relu(h)
        tf.identity(h, name="prob")
        saver = v1.train.Saver()
        with v1.Session(graph=g, config=cfg) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(out / "model.ckpt"))

    # tf.keras in a TF1 graph, keras_learning_phase never fed: BN trains in inference mode.
    out = OUT / "tf1_keras_learning_phase"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    def keras_net(x):  # type: ignore[no-untyped-def]
        K = tf.keras.layers  # noqa: N806
        h = K.Conv2D(4, 3, padding="same", use_bias=False)(x)
        h = K.ReLU()(K.BatchNormalization()(h))
        h = K.GlobalAveragePooling2D()(h)
        h = K.ReLU()(K.BatchNormalization()(K.Dense(8, use_bias=False)(h)))
        return K.Dense(4)(h)

    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        logits = keras_net(x)
        loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
        step = v1.train.get_or_create_global_step()
        train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
        saver = v1.train.Saver()
        with v1.Session(graph=g, config=cfg) as sess:
            sess.run(v1.global_variables_initializer())
            for i in range(60):
                sl = slice((i * 32) % 512, (i * 32) % 512 + 32)
                sess.run(train_op, {x: x_all[sl], y: y_all[sl]})  # learning phase never fed
            saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
    serving = tf.Graph()  # what an Estimator export keeps: the model, no optimizer
    with serving.as_default():
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        keras_net(x)
        v1.train.get_or_create_global_step()
        v1.train.Saver().export_meta_graph(str(out / "model.ckpt.meta"))


def make_tf1_savedmodel() -> None:
    """`tf1_savedmodel/`: a TF1 SavedModel (SavedModelBuilder, as Estimator exports write it) of
    the hand-written BN net, trained without running its update ops: `pop_mean` / `pop_var`
    stay 0 / 1 and only `saved_model.pb`'s graph names them as BN statistics."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    x_all, y_all = _data(512)
    out = OUT / "tf1_savedmodel"
    shutil.rmtree(out, ignore_errors=True)
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(0)
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        init = v1.glorot_uniform_initializer(seed=1)
        w = v1.get_variable("conv/w", [3, 3, 1, 4], initializer=init)
        h = tf.nn.conv2d(x, w, 1, "SAME")
        with v1.variable_scope("norm"):
            scale = v1.get_variable("scale", [4], initializer=v1.ones_initializer())
            offset = v1.get_variable("offset", [4], initializer=v1.zeros_initializer())
            pop_mean = v1.get_variable("pop_mean", [4], initializer=v1.zeros_initializer(),
                                       trainable=False)
            pop_var = v1.get_variable("pop_var", [4], initializer=v1.ones_initializer(),
                                      trainable=False)
            mean, var = tf.nn.moments(h, [0, 1, 2])
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                 v1.assign(pop_mean, pop_mean * 0.9 + mean * 0.1))
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS,
                                 v1.assign(pop_var, pop_var * 0.9 + var * 0.1))
            h = tf.nn.relu(tf.nn.batch_normalization(h, mean, var, offset, scale, 1e-3))
        wo = v1.get_variable("head/w", [4, 4], initializer=init)
        logits = tf.matmul(tf.reduce_mean(h, [1, 2]), wo)
        loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
        step = v1.train.get_or_create_global_step()
        train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)  # no UPDATE_OPS
        with v1.Session(graph=g) as sess:
            sess.run(v1.global_variables_initializer())
            for i in range(40):
                sl = slice((i * 32) % 512, (i * 32) % 512 + 32)
                sess.run(train_op, {x: x_all[sl], y: y_all[sl]})
            builder = v1.saved_model.Builder(str(out))
            builder.add_meta_graph_and_variables(sess, ["serve"], strip_default_attrs=True)
            builder.save()


def make_keras1() -> None:
    import h5py
    import numpy as np

    rng = np.random.default_rng(3)
    with h5py.File(OUT / "keras1_uniquified.h5", "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["layer_names"] = np.array([b"Dense", b"Normalize"])
        g = f.create_group("Dense")
        g.attrs["weight_names"] = np.array([b"Dense/Dense_W_2:0", b"Dense/Dense_b_2:0"])
        g.create_group("Dense")
        g["Dense/Dense_W_2:0"] = rng.normal(size=(3, 4)).astype("float32")
        g["Dense/Dense_b_2:0"] = np.zeros(4, "float32")
        g = f.create_group("Normalize")
        names = [f"Normalize/Normalize_{w}_2:0" for w in
                 ("gamma", "beta", "running_mean", "running_std")]
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        g.create_group("Normalize")
        g[names[0]] = rng.uniform(0.5, 1.5, 4).astype("float32")
        g[names[1]] = rng.normal(size=4).astype("float32")
        g[names[2]] = np.zeros(4, "float32")  # never updated: the bug, in Keras 1
        g[names[3]] = np.ones(4, "float32")


def _relative_state_files() -> None:
    """`Saver.save` writes absolute paths into `checkpoint`; keep the committed ones relative."""
    for state in OUT.glob("*/checkpoint"):
        state.write_text('model_checkpoint_path: "model.ckpt"\n'
                         'all_model_checkpoint_paths: "model.ckpt"\n')


PARTS = {
    "keras3": make_keras3,
    "tf1": make_tf1,
    "tf1_savedmodel": make_tf1_savedmodel,
    "keras1": make_keras1,
}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    if len(sys.argv) > 1:
        PARTS[sys.argv[1]]()
    else:  # Keras 3 and tf-keras cannot share a process
        for part in PARTS:
            subprocess.run([sys.executable, __file__, part], check=True)
    _relative_state_files()
