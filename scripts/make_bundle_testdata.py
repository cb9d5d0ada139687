"""Generate the small TensorFlow tensor-bundle checkpoints under tests/data/bundle/.

Run once with TensorFlow installed; the outputs are committed so most tests need no TF:

    TF_CPP_MIN_LOG_LEVEL=3 .venv/bin/python scripts/make_bundle_testdata.py

Each case runs in its own subprocess because the Keras flavour (Keras 3 vs tf-keras) is chosen
by `TF_USE_LEGACY_KERAS` at import time, and TF1 graph mode / logical devices must be set up
before anything else touches TensorFlow.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "bundle"

# case name -> needs tf-keras (TF_USE_LEGACY_KERAS=1)
CASES = {
    "tf1_bn": True,
    "tf1_sharded": True,
    "tf2_keras3": False,
    "tfkeras_save_weights": True,
    "tfkeras_object": True,
    "savedmodel": True,
    "tfkeras_model_save": True,
    "empty_prefix": False,
    "keras3_export": False,
}


def _fresh(name: str) -> Path:
    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    return d


def case_tf1_bn(d: Path) -> None:
    """TF1 Saver: dense + batch_normalization, Adam slots, a partitioned variable, odd dtypes."""
    import numpy as np
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        tf.compat.v1.set_random_seed(0)
        x = tf.compat.v1.placeholder(tf.float32, [None, 4])
        with tf.compat.v1.variable_scope("net"):
            h = tf.compat.v1.layers.dense(x, 3, name="dense")
            h = tf.compat.v1.layers.batch_normalization(h, training=True)
            part = tf.compat.v1.get_variable(
                "partitioned",
                shape=[6, 2],
                partitioner=tf.compat.v1.fixed_size_partitioner(2),
                initializer=tf.compat.v1.random_normal_initializer(),
            )
        loss = tf.reduce_mean(h**2) + tf.reduce_sum(part)
        update_ops = tf.compat.v1.get_collection(tf.compat.v1.GraphKeys.UPDATE_OPS)
        with tf.control_dependencies(update_ops):
            train = tf.compat.v1.train.AdamOptimizer(0.01).minimize(loss)
        with tf.compat.v1.variable_scope("extra"):
            tf.compat.v1.get_variable(
                "bf16", initializer=tf.constant([1.5, -2.25, 3.0], dtype=tf.bfloat16)
            )
            tf.compat.v1.get_variable(
                "f16", initializer=tf.constant([[0.5, 1.0]], dtype=tf.float16)
            )
            tf.compat.v1.get_variable(
                "i64", initializer=tf.constant([1, 2, 1 << 40], dtype=tf.int64)
            )
            tf.compat.v1.get_variable("u8", initializer=tf.constant([0, 7, 255], dtype=tf.uint8))
            tf.compat.v1.get_variable("flag", initializer=tf.constant(True))
            tf.compat.v1.get_variable("f64_scalar", initializer=tf.constant(2.5, dtype=tf.float64))
            tf.compat.v1.Variable(tf.constant([b"hello", b"", b"w\x00rld"]), name="strings")
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            rng = np.random.default_rng(0)
            for _ in range(2):
                s.run(train, {x: rng.normal(size=(8, 4)).astype(np.float32)})
            saver.save(s, str(d / "model.ckpt"), write_meta_graph=False)
    # Saver writes absolute paths into the state file: pretend it came from another machine.
    (d / "checkpoint").write_text(
        'model_checkpoint_path: "/home/someone/run42/model.ckpt"\n'
        'all_model_checkpoint_paths: "/home/someone/run42/model.ckpt"\n'
    )


def case_tf1_sharded(d: Path) -> None:
    """Saver(sharded=True) with variables on two logical CPUs: two data shards."""
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
    tf.compat.v1.disable_eager_execution()
    g = tf.Graph()
    with g.as_default():
        for i, dev in enumerate(["/cpu:0", "/cpu:1"]):
            with tf.device(dev), tf.compat.v1.variable_scope(f"tower{i}"):
                x = tf.compat.v1.get_variable("x", initializer=tf.range(6.0) + i)
                tf.compat.v1.layers.batch_normalization(tf.reshape(x, [2, 3]), training=True)
        saver = tf.compat.v1.train.Saver(sharded=True)
        with tf.compat.v1.Session() as s:
            s.run(tf.compat.v1.global_variables_initializer())
            saver.save(s, str(d / "model.ckpt"), write_meta_graph=False)
    (d / "checkpoint").unlink(missing_ok=True)


def _small_model(keras):  # type: ignore[no-untyped-def]
    inp = keras.Input((4,))
    h = keras.layers.Dense(3, name="dense")(inp)
    h = keras.layers.BatchNormalization(name="bn")(h)
    out = keras.layers.Dense(2, name="head")(h)
    return keras.Model(inp, out)


def _train_step(model, keras) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(0)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="mse")
    model.fit(
        rng.normal(size=(8, 4)).astype("float32"),
        rng.normal(size=(8, 2)).astype("float32"),
        epochs=1,
        batch_size=8,
        verbose=0,
    )


def case_tf2_keras3(d: Path) -> None:
    """tf.train.Checkpoint(model=Keras 3 model, optimizer=...) after one train step."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = _small_model(keras)
    _train_step(model, keras)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    ckpt.write(str(d / "ckpt"))


def case_tfkeras_save_weights(d: Path) -> None:
    """tf-keras model.save_weights in TF format (no .h5), after one train step."""
    import tensorflow as tf

    keras = tf.keras
    assert "tf_keras" in keras.__name__ or "keras.api._v2" in keras.__name__, keras.__name__
    tf.random.set_seed(0)
    model = _small_model(keras)
    _train_step(model, keras)
    model.save_weights(str(d / "weights.ckpt"))


def case_tfkeras_object(d: Path) -> None:
    """tf.train.Checkpoint of a tf-keras Sequential model with its optimizer."""
    import tensorflow as tf

    keras = tf.keras
    tf.random.set_seed(0)
    model = keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(3),
            keras.layers.BatchNormalization(),
            keras.layers.Dense(2),
        ]
    )
    _train_step(model, keras)
    tf.train.Checkpoint(model=model, optimizer=model.optimizer).write(str(d / "ckpt"))


def case_savedmodel(d: Path) -> None:
    """tf.saved_model.save of a tiny tf-keras model with BN."""
    import tensorflow as tf

    keras = tf.keras
    tf.random.set_seed(0)
    model = _small_model(keras)
    _train_step(model, keras)
    tf.saved_model.save(model, str(d / "model"))


def case_tfkeras_model_save(d: Path) -> None:
    """tf-keras model.save(save_format="tf"): layer classes/configs live in keras_metadata.pb.

    saved_model.pb (the graph, ~100 KB) is deleted to keep the test data small: the reader
    needs only variables/ and keras_metadata.pb.
    """
    import tensorflow as tf

    keras = tf.keras
    tf.random.set_seed(0)
    model = _small_model(keras)
    _train_step(model, keras)
    model.save(str(d / "model"), save_format="tf")
    for name in ("saved_model.pb", "fingerprint.pb"):
        (d / "model" / name).unlink()
    shutil.rmtree(d / "model" / "assets", ignore_errors=True)


def case_keras3_export(d: Path) -> None:
    """Keras 3 `model.export()`: no layer objects in the graph, only numbered variable lists
    (`variables/N`, plus copies under `_all_variables/N`); layer names survive only as the
    variables' TF names in saved_model.pb (~55 KB, kept for that reason)."""
    import keras

    keras.utils.set_random_seed(0)
    model = _small_model(keras)
    _train_step(model, keras)
    model.export(str(d / "model"))
    (d / "model" / "fingerprint.pb").unlink()


def case_empty_prefix(d: Path) -> None:
    """A bundle whose prefix is the directory itself: files named `.index`, `.data-...`."""
    import tensorflow as tf

    ckpt = tf.train.Checkpoint(v=tf.Variable([1.0, 2.0, 3.0]), step=tf.Variable(7, dtype=tf.int64))
    ckpt.write(str(d) + "/")


def main() -> None:
    if len(sys.argv) == 2:
        name = sys.argv[1]
        globals()[f"case_{name}"](_fresh(name))
        return
    for name, legacy in CASES.items():
        env = dict(
            os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONHASHSEED="0", CUDA_VISIBLE_DEVICES=""
        )
        if legacy:
            env["TF_USE_LEGACY_KERAS"] = "1"
        else:
            env.pop("TF_USE_LEGACY_KERAS", None)
        print(f"generating {name} ...", flush=True)
        subprocess.run([sys.executable, __file__, name], env=env, check=True)
    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"wrote {OUT} ({total} bytes)")


if __name__ == "__main__":
    main()
