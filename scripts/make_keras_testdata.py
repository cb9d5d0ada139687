"""Generate the small Keras test files in tests/data/keras/ (run once; the outputs are committed).

Usage: python scripts/make_keras_testdata.py            # both parts, each in its own process
       python scripts/make_keras_testdata.py keras3     # Keras 3 files only
       python scripts/make_keras_testdata.py tfkeras    # tf-keras (Keras 2) files only
       python scripts/make_keras_testdata.py keras1     # hand-made Keras 1 style .h5 (h5py only)

Keras 3 and tf-keras cannot share a process (TF_USE_LEGACY_KERAS switches `tf.keras`), so the
default run starts one subprocess per part. Every model is trained for a few steps on fixed
random data so the moving statistics are neither 0 nor 1 and value comparisons mean something.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "keras"


def _data(shape: tuple[int, ...], n: int = 16, seed: int = 0):  # type: ignore[no-untyped-def]
    import numpy as np

    rng = np.random.default_rng(seed)
    x = (rng.normal(size=(n, *shape)) * 2.0 + 0.5).astype("float32")
    y = rng.normal(size=(n, 2)).astype("float32")
    return x, y


def make_keras3() -> None:
    os.environ.pop("TF_USE_LEGACY_KERAS", None)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    x, y = _data((6, 6, 3))

    # Nested Functional block with its own BN (center=False) and a duplicate BN class.
    inner_in = keras.Input((6, 6, 4))
    h = layers.Conv2D(4, 1, name="inner_conv")(inner_in)
    h = layers.BatchNormalization(center=False, name="inner_bn")(h)
    h = layers.BatchNormalization(name="inner_bn2")(h)
    inner = keras.Model(inner_in, h, name="inner_block")

    inp = keras.Input((6, 6, 3))
    norm = layers.Normalization(axis=-1, name="input_norm")
    norm.adapt(x)
    h = norm(inp)
    h = layers.Conv2D(4, 3, padding="same", name="conv_a")(h)
    h = layers.BatchNormalization(name="bn_a")(h)
    h = inner(h)
    h = layers.BatchNormalization(scale=False, name="bn_noscale")(h)
    h = layers.BatchNormalization(axis=1, name="bn_axis1")(h)
    h = layers.BatchNormalization(renorm=True, name="bn_renorm")(h)
    h = layers.BatchNormalization()(h)  # auto-named
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(2, name="head")(h)
    model = keras.Model(inp, out, name="k3_functional")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    model.save(OUT / "k3_functional.keras")
    model.save_weights(OUT / "k3_functional.weights.h5")
    model.save(OUT / "k3_functional.h5")  # Keras 3's legacy HDF5 writer

    keras.utils.set_random_seed(1)
    xs, ys = _data((5,), seed=1)
    seq = keras.Sequential(
        [
            keras.Input((5,)),
            layers.Dense(3, name="d1"),
            layers.BatchNormalization(name="bn_seq"),
            layers.Dense(2, name="d2"),
            layers.BatchNormalization(center=False, scale=False),
        ],
        name="k3_seq",
    )
    seq.compile(optimizer="sgd", loss="mse")
    seq.fit(xs, ys, batch_size=8, epochs=2, verbose=0)
    seq.save(OUT / "k3_seq.keras")
    seq.save_weights(OUT / "k3_seq.weights.h5")


def make_tfkeras() -> None:
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow as tf
    import tf_keras as keras
    from tf_keras import layers

    tf.random.set_seed(0)
    np.random.seed(0)
    x, y = _data((6, 6, 3))

    inner = keras.Sequential(
        [
            layers.Conv2D(4, 1, input_shape=(6, 6, 4), name="inner_conv"),
            layers.BatchNormalization(name="inner_bn"),
            layers.BatchNormalization(center=False, name="inner_bn_nocenter"),
        ],
        name="inner_seq",
    )
    inp = keras.Input((6, 6, 3))
    h = layers.Conv2D(4, 3, padding="same", name="conv_a")(inp)
    h = layers.BatchNormalization(name="bn_a")(h)
    h = inner(h)
    h = layers.BatchNormalization(scale=False, name="bn_noscale")(h)
    h = layers.GlobalAveragePooling2D()(h)
    out = layers.Dense(2, name="head")(h)
    model = keras.Model(inp, out, name="tfk_model")
    model.compile(optimizer="adam", loss="mse")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    model.save(OUT / "tfk_model.h5")
    model.save_weights(OUT / "tfk_model.weights-only.h5")


def make_keras1() -> None:
    """A hand-made file in the Keras 1.2 layout (no Keras 1 runs on Python 3.11).

    Keras 1 named BN stats `<layer>_running_mean` / `<layer>_running_std`, with no scope; late
    Keras 1 (1.1+) stored the *variance* in running_std despite the name.
    """
    import h5py
    import numpy as np

    rng = np.random.default_rng(2)
    with h5py.File(OUT / "keras1_bn.h5", "w") as f:
        f.attrs["keras_version"] = b"1.2.2"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["layer_names"] = np.array([b"dense_1", b"batchnormalization_1"])
        g = f.create_group("dense_1")
        g.attrs["weight_names"] = np.array([b"dense_1_W:0", b"dense_1_b:0"])
        g["dense_1_W:0"] = rng.normal(size=(3, 4)).astype("float32")
        g["dense_1_b:0"] = np.zeros(4, "float32")
        g = f.create_group("batchnormalization_1")
        names = ["gamma", "beta", "running_mean", "running_std"]
        g.attrs["weight_names"] = np.array([f"batchnormalization_1_{n}:0".encode() for n in names])
        for n in names:
            g[f"batchnormalization_1_{n}:0"] = rng.uniform(0.5, 1.5, size=4).astype("float32")


def main(argv: list[str]) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    parts = {"keras3": make_keras3, "tfkeras": make_tfkeras, "keras1": make_keras1}
    if len(argv) > 1:
        parts[argv[1]]()
        return
    for name in parts:
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, __file__, name], check=True, env=env)


if __name__ == "__main__":
    main(sys.argv)
