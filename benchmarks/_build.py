"""Build the benchmark inputs with TensorFlow / Keras (run by run.py in its own process).

    python benchmarks/_build.py resnet50 CACHE      ResNet-50 as TF checkpoint and .keras, plus the
                                                   ~100 MB scaling checkpoint
    python benchmarks/_build.py big CACHE MB       the same model and BN layers with MB of extra
                                                   non-BN tensors (the ~2 GB scaling checkpoint)
    python benchmarks/_build.py mobilenet CACHE S  MobileNetV2(weights=None) at SxS as .keras

ResNet-50 gets realistic, seeded BN values (a trained model's moving stats are not 0 / 1), so
the audit runs every rule on real numbers and finds nothing. MobileNetV2 keeps its fresh 0 / 1
statistics: that is the model recalibration is for.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

EXTRA_VARIABLES = 8  # the scaling checkpoints differ only in the size of these


class Extra(tf.Module):
    """Large non-BN tensors (think embedding tables), tracked next to the model."""

    def __init__(self, total_bytes: int) -> None:
        super().__init__(name="extra")
        per = max(1, total_bytes // EXTRA_VARIABLES // 4)
        rng = np.random.default_rng(0)
        block = rng.standard_normal(min(per, 1 << 20)).astype(np.float32)
        self.tables = [
            tf.Variable(np.resize(block, per), name=f"table_{i}", trainable=True)
            for i in range(EXTRA_VARIABLES)
        ]


def resnet50() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.applications.ResNet50(weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.gamma.assign(rng.normal(1.0, 0.2, c).astype(np.float32))
            layer.beta.assign(rng.normal(0.0, 0.2, c).astype(np.float32))
            layer.moving_mean.assign(rng.normal(0.0, 0.5, c).astype(np.float32))
            layer.moving_variance.assign(np.exp(rng.normal(0.0, 1.0, c)).astype(np.float32))
    return model


def main(argv: list[str]) -> None:
    what, cache = argv[0], Path(argv[1])
    cache.mkdir(parents=True, exist_ok=True)
    if what == "resnet50":
        model = resnet50()
        tf.train.Checkpoint(model=model).write(str(cache / "resnet50" / "ckpt"))
        model.save(cache / "resnet50.keras")
        small = tf.train.Checkpoint(model=model, extra=Extra(EXTRA_VARIABLES * 4))
        small.write(str(cache / "scale_small" / "ckpt"))
    elif what == "big":
        model = resnet50()
        tf.train.Checkpoint(model=model).read(str(cache / "resnet50" / "ckpt")).expect_partial()
        extra = Extra(int(argv[2]) << 20)
        tf.train.Checkpoint(model=model, extra=extra).write(str(cache / "scale_big" / "ckpt"))
    elif what == "mobilenet":
        size = int(argv[2])
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None, input_shape=(size, size, 3))
        model.save(cache / f"mobilenetv2_{size}.keras")
    else:
        raise SystemExit(f"unknown target {what!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
