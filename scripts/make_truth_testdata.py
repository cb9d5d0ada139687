"""Regenerate tests/data/truth/: files on which one source of evidence, trusted alone, used to
give a silently wrong verdict (issue 21). Each case says what the tensors prove.

Run from the repository root (tensorflow-cpu, tf-keras):

    .venv/bin/python scripts/make_truth_testdata.py

TF1 graphs (tf.compat.v1 graph mode, `TF_USE_LEGACY_KERAS=1`):
- `tf1_zero_debias/`: hand-written BN whose moving mean uses
  `assign_moving_average(..., zero_debias=True)` (as `slim.batch_norm(zero_debias_moving_mean=
  True)` does, here for the variance too): `bn/bn/moving_mean/biased` and `.../local_step` sit
  next to the real statistics; the train op skips the update ops, so the statistics are
  exactly 0 / 1 (BN002);
- `tf1_zero_debias_trainable_only/`: the same graph, trained with its updates, saved by a
  trainable-only Saver: no statistics at all (BN001);
- `tf1_batch_stats_only/`: `tf.nn.batch_normalization` on `tf.nn.moments` of the batch, trained
  scale / offset, no moving statistics anywhere: training and inference compute different
  functions;
- `tf1_ema_unwired/`: `tf.train.ExponentialMovingAverage` over `tf.nn.moments`, `tf.cond` on
  `is_training`, the EMA's update op not on the train op's path: the averages are still at their
  start (0 and 0);
- `tf1_forged_meta/`: a checkpoint with `bn/moving_mean` 0 and `bn/moving_variance` 1 (BN002),
  beside a `.meta` whose FusedBatchNorm reads `bn/gamma` / `bn/beta` as its mean / variance;
- `tf1_forged_scale/`: a checkpoint with a NaN in `bn/gamma`, beside a `.meta` whose
  FusedBatchNorm takes its scale from `elsewhere/scale`, a variable the checkpoint lacks.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "truth"


def _fresh(name: str) -> Path:
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def make_tf1() -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    v1.disable_eager_execution()
    from make_evidence_testdata import _data  # the same task as the evidence files

    x_all, y_all = _data(512)
    cfg = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)

    def conv(x, name, c):  # type: ignore[no-untyped-def]
        init = v1.glorot_uniform_initializer(seed=1)
        with v1.variable_scope(name):
            w = v1.get_variable("w", [3, 3, int(x.shape[-1]), c], initializer=init)
            return tf.nn.conv2d(x, w, 1, "SAME")

    def head(h):  # type: ignore[no-untyped-def]
        init = v1.glorot_uniform_initializer(seed=2)
        h = tf.reduce_mean(h, axis=[1, 2])
        w = v1.get_variable("logits/w", [int(h.shape[-1]), 4], initializer=init)
        return tf.matmul(h, w)

    def train(name, net, *, wire_updates, trainable_only=False, steps=60):  # type: ignore[no-untyped-def]
        out = _fresh(name)
        g = tf.Graph()
        with g.as_default():
            v1.set_random_seed(0)
            x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
            y = v1.placeholder(tf.int64, [None], name="y")
            is_training = v1.placeholder_with_default(False, [], name="is_training")
            logits = net(x, is_training)
            loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
            step = v1.train.get_or_create_global_step()
            deps = v1.get_collection(v1.GraphKeys.UPDATE_OPS) if wire_updates else []
            with tf.control_dependencies(deps):
                train_op = v1.train.AdamOptimizer(0.01).minimize(loss, global_step=step)
            saver = v1.train.Saver(var_list=v1.trainable_variables() if trainable_only else None)
            with v1.Session(graph=g, config=cfg) as sess:
                sess.run(v1.global_variables_initializer())
                for i in range(steps):
                    sl = slice((i * 32) % 512, (i * 32) % 512 + 32)
                    sess.run(train_op, {x: x_all[sl], y: y_all[sl], is_training: True})
                saver.save(sess, str(out / "model.ckpt"))

    # 1. zero-debias moving averages (slim's zero_debias_moving_mean)
    def debias_bn(h, is_training, decay=0.9):  # type: ignore[no-untyped-def]
        from tensorflow.python.training import moving_averages

        c = int(h.shape[-1])
        with v1.variable_scope("bn"):
            gamma = v1.get_variable("gamma", [c], initializer=v1.ones_initializer())
            beta = v1.get_variable("beta", [c], initializer=v1.zeros_initializer())
            mm = v1.get_variable("moving_mean", [c], initializer=v1.zeros_initializer(),
                                 trainable=False)
            mv = v1.get_variable("moving_variance", [c], initializer=v1.ones_initializer(),
                                 trainable=False)

            y_train, mean, var = v1.nn.fused_batch_norm(h, gamma, beta, epsilon=1e-3,
                                                        is_training=True)
            um = moving_averages.assign_moving_average(mm, mean, decay, zero_debias=True)
            uv = moving_averages.assign_moving_average(mv, var, decay, zero_debias=True)
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, um)
            v1.add_to_collection(v1.GraphKeys.UPDATE_OPS, uv)
            y_infer, _, _ = v1.nn.fused_batch_norm(h, gamma, beta, mm, mv, epsilon=1e-3,
                                                   is_training=False)
            return tf.cond(is_training, lambda: y_train, lambda: y_infer)

    def debias_net(x, is_training):  # type: ignore[no-untyped-def]
        return head(tf.nn.relu(debias_bn(conv(x, "conv1", 4), is_training)))

    train("tf1_zero_debias", debias_net, wire_updates=False)
    train("tf1_zero_debias_trainable_only", debias_net, wire_updates=True, trainable_only=True)

    # 2. batch statistics only: no moving averages anywhere
    def batch_stats_net(x, is_training):  # type: ignore[no-untyped-def]
        h = conv(x, "conv1", 4)
        with v1.variable_scope("norm1"):
            scale = v1.get_variable("scale", [4], initializer=v1.ones_initializer())
            offset = v1.get_variable("offset", [4], initializer=v1.zeros_initializer())
            mean, var = tf.nn.moments(h, [0, 1, 2])
            h = tf.nn.batch_normalization(h, mean, var, offset, scale, 1e-3)
        return head(tf.nn.relu(h))

    train("tf1_batch_stats_only", batch_stats_net, wire_updates=True)

    # 3. hand-made EMA over the batch moments, its update op not on the train op's path
    def ema_bn(h, is_training, scope):  # type: ignore[no-untyped-def]
        c = int(h.shape[-1])
        with v1.variable_scope(scope):
            scale = v1.get_variable("scale", [c], initializer=v1.ones_initializer())
            offset = v1.get_variable("offset", [c], initializer=v1.zeros_initializer())
            mean, var = tf.nn.moments(h, [0, 1, 2], name="moments")
            ema = v1.train.ExponentialMovingAverage(decay=0.9)
            update = ema.apply([mean, var])  # never run: not a dependency of anything
            del update

            def training():  # type: ignore[no-untyped-def]
                return tf.identity(mean), tf.identity(var)

            def inference():  # type: ignore[no-untyped-def]
                return ema.average(mean), ema.average(var)

            m, v = tf.cond(is_training, training, inference)
            return tf.nn.batch_normalization(h, m, v, offset, scale, 1e-3)

    def ema_net(x, is_training):  # type: ignore[no-untyped-def]
        h = tf.nn.relu(ema_bn(conv(x, "conv1", 4), is_training, "bn1"))
        h = tf.nn.relu(ema_bn(conv(h, "conv2", 8), is_training, "bn2"))
        return head(h)

    train("tf1_ema_unwired", ema_net, wire_updates=True)

    # 7. forged graphs beside honest checkpoints
    rng = np.random.default_rng(7)
    gamma = rng.uniform(0.5, 1.5, 4).astype("float32")
    beta = rng.normal(size=4).astype("float32")
    for name, forge in (("tf1_forged_meta", "stats"), ("tf1_forged_scale", "scale")):
        out = _fresh(name)
        g = tf.Graph()
        with g.as_default():
            x = v1.placeholder(tf.float32, [None, 8, 8, 4], name="x")
            with v1.variable_scope("bn"):
                gv = v1.get_variable("gamma", initializer=gamma)
                bv = v1.get_variable("beta", initializer=beta)
                mv = v1.get_variable("moving_mean", initializer=np.zeros(4, "float32"),
                                     trainable=False)
                vv = v1.get_variable("moving_variance", initializer=np.ones(4, "float32"),
                                     trainable=False)
            with g.as_default(), v1.Session(graph=g, config=cfg) as sess:
                sess.run(v1.global_variables_initializer())
                if forge == "scale":
                    bad = gamma.copy()
                    bad[1] = np.nan
                    gv.load(bad, sess)
                    # healthy statistics, so only the NaN is wrong
                    mv.load(rng.normal(size=4).astype("float32"), sess)
                    vv.load(rng.uniform(0.5, 2, 4).astype("float32"), sess)
                v1.train.Saver().save(sess, str(out / "model.ckpt"), write_meta_graph=False)
        forged = tf.Graph()
        with forged.as_default():
            x = v1.placeholder(tf.float32, [None, 8, 8, 4], name="x")
            with v1.variable_scope("bn"):
                gv = v1.get_variable("gamma", [4])
                bv = v1.get_variable("beta", [4])
                mv = v1.get_variable("moving_mean", [4], trainable=False)
                vv = v1.get_variable("moving_variance", [4], trainable=False)
            if forge == "stats":  # the graph calls gamma the mean and beta the variance
                y, _, _ = v1.nn.fused_batch_norm(x, tf.ones([4]), tf.zeros([4]), gv, bv,
                                                 is_training=False)
            else:  # the scale comes from a variable the checkpoint does not hold
                other = v1.get_variable("elsewhere/scale", [4])
                y, _, _ = v1.nn.fused_batch_norm(x, other, bv, mv, vv, is_training=False)
            tf.identity(y, name="y")
            v1.train.Saver(var_list=[gv, bv, mv, vv]).export_meta_graph(
                str(out / "model.ckpt.meta"))


def _relative_state_files() -> None:
    for state in OUT.glob("*/checkpoint"):
        state.write_text('model_checkpoint_path: "model.ckpt"\n'
                         'all_model_checkpoint_paths: "model.ckpt"\n')


def make_keras1_nested() -> None:
    """`keras1_nested.h5`: a Keras 1.2 model whose second layer is a Sequential holding
    Convolution2D + BatchNormalization blocks; Keras 1 saves the inner weights flat under the
    outer layer as `batchnormalization_N_running_mean:0`. Five BN layers: the first healthy,
    then a NaN in a variance, a negative variance, a healthy one, and one never updated."""
    import json

    import h5py
    import numpy as np

    rng = np.random.default_rng(11)
    inner = []
    weights: dict[str, np.ndarray] = {}
    for i in range(1, 6):
        inner.append({"class_name": "Convolution2D",
                      "config": {"name": f"convolution2d_{i}", "nb_filter": 4}})
        inner.append({"class_name": "BatchNormalization",
                      "config": {"name": f"batchnormalization_{i}", "momentum": 0.99,
                                 "mode": 0, "axis": -1}})
        weights[f"convolution2d_{i}_W:0"] = rng.normal(size=(4, 4, 3, 3)).astype("float32")
        weights[f"convolution2d_{i}_b:0"] = rng.normal(size=4).astype("float32")
        var = rng.uniform(0.5, 2, 4).astype("float32")
        mean = rng.normal(size=4).astype("float32")
        if i == 2:
            var[2] = np.nan
        if i == 3:
            var[0] = -0.5
        if i == 5:
            mean, var = np.zeros(4, "float32"), np.ones(4, "float32")
        weights[f"batchnormalization_{i}_gamma:0"] = rng.uniform(0.5, 1.5, 4).astype("float32")
        weights[f"batchnormalization_{i}_beta:0"] = rng.normal(size=4).astype("float32")
        weights[f"batchnormalization_{i}_running_mean:0"] = mean
        weights[f"batchnormalization_{i}_running_std:0"] = var
    config = {"class_name": "Sequential", "config": [
        {"class_name": "InputLayer", "config": {"name": "input_1"}},
        {"class_name": "Sequential", "config": inner, "name": "sequential_1"},
        {"class_name": "Dense", "config": {"name": "dense_1", "output_dim": 2}},
    ]}
    with h5py.File(OUT / "keras1_nested.h5", "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        mw = f.create_group("model_weights")
        mw.attrs["layer_names"] = np.array([b"input_1", b"sequential_1", b"dense_1"])
        mw.create_group("input_1").attrs["weight_names"] = np.array([], dtype="S1")
        g = mw.create_group("sequential_1")
        g.attrs["weight_names"] = np.array([n.encode() for n in weights])
        for name, value in weights.items():
            g[name] = value
        g = mw.create_group("dense_1")
        g.attrs["weight_names"] = np.array([b"dense_1_W:0", b"dense_1_b:0"])
        g["dense_1_W:0"] = rng.normal(size=(4, 2)).astype("float32")
        g["dense_1_b:0"] = np.zeros(2, "float32")


PARTS = {"tf1": make_tf1, "keras1": make_keras1_nested}

if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    for part in sys.argv[1:] or list(PARTS):
        PARTS[part]()
    _relative_state_files()
