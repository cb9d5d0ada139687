"""Regenerate tests/data/tf1_recal/: tiny TF1 checkpoints for the bundle-recalibration tests.

Run from the repository root (tensorflow-cpu, tf-keras):

    .venv/bin/python scripts/make_tf1_recal_testdata.py

Writes two TF1 `Saver` checkpoints, each `model.ckpt.{index,data-00000-of-00001,meta}` +
`checkpoint`, trained on the task of scripts/make_sample_ckpts.py (graph builders in
tests/data/tf1_recal/models.py):
- `moments/`: hand-made BN (`tf.nn.moments`, `tf.cond` on `is_training`, moving averages in
  UPDATE_OPS) trained with Adam WITHOUT running UPDATE_OPS: stats stay 0 / 1 (BN002);
- `slim/`: contrib / slim-style BN (`conv1/BatchNorm/{beta,moving_*}`, no gamma, decay 0.999),
  update ops wired but only 150 Momentum steps: stats 14% of the way. Has `/Momentum`
  optimizer slots.
To keep the files small the `.meta` is the model graph (placeholders, model, logits) without
the optimizer, exported from a fresh graph built by the same function; the checkpoint still
holds the optimizer's slots, which `Saver.restore` of that graph simply ignores.
The sample `sample_ckpts/tf1_update_ops_missing/` (tf.layers, real training .meta) is the
third case the tests use. Each part runs in a subprocess: tf.compat.v1.layers needs
TF_USE_LEGACY_KERAS=1, set before TensorFlow is imported.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "tf1_recal"
sys.path.insert(0, str(OUT))


def train(name: str, build: str, *, steps: int, update_ops: bool, standardize: bool) -> None:
    import models
    import numpy as np
    import tensorflow as tf

    v1 = tf.compat.v1
    x_all, y_all = models.make_data(1024, seed=0)
    if standardize:
        x_all = (x_all - x_all.mean()) / x_all.std()
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    cfg = v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(0)
        logits = getattr(models, build)()
        x = g.get_tensor_by_name("x:0")
        is_training = g.get_tensor_by_name("is_training:0")
        y = v1.placeholder(tf.int64, [None], name="y")
        loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
        step = v1.train.get_or_create_global_step()
        opt = v1.train.MomentumOptimizer(0.05, 0.9) if standardize else v1.train.AdamOptimizer(0.01)
        if update_ops:
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                train_op = opt.minimize(loss, global_step=step)
        else:  # the bug: moving statistics never updated
            train_op = opt.minimize(loss, global_step=step)
        saver = v1.train.Saver(save_relative_paths=True)
        rng = np.random.default_rng(1)
        with v1.Session(config=cfg) as sess:
            sess.run(v1.global_variables_initializer())
            for _ in range(steps):
                idx = rng.integers(0, len(x_all), 32)
                sess.run(train_op, {x: x_all[idx], y: y_all[idx], is_training: True})
            acc_t = (sess.run(logits, {x: x_all, is_training: True}).argmax(1) == y_all).mean()
            acc_i = (sess.run(logits, {x: x_all}).argmax(1) == y_all).mean()
            saver.save(sess, str(out / "model.ckpt"), write_meta_graph=False)
    # The .meta: the model graph alone (no optimizer), same variable names.
    g2 = tf.Graph()
    with g2.as_default():
        getattr(models, build)()
        v1.train.get_or_create_global_step()
        v1.train.Saver(save_relative_paths=True).export_meta_graph(
            str(out / "model.ckpt.meta"), strip_default_attrs=True, clear_devices=True
        )
    print(f"{name}: train-mode accuracy {acc_t:.2f}, inference-mode {acc_i:.2f}")


def main() -> None:
    if len(sys.argv) > 1:
        part = sys.argv[1]
        if part == "moments":
            train("moments", "moments_graph", steps=200, update_ops=False, standardize=False)
        elif part == "slim":
            train("slim", "slim_graph", steps=150, update_ops=True, standardize=True)
        return
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    for part in ("moments", "slim"):
        subprocess.run([sys.executable, __file__, part], check=True, env=env)
    for p in sorted(OUT.rglob("*")):
        if p.is_file():
            print(f"  {p.relative_to(ROOT)}: {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
