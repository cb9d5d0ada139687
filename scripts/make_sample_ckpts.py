"""Regenerate sample_ckpts/: tiny checkpoints, each everyday BN failure beside a healthy twin.

Needs (the project's `test` extra): tensorflow-cpu >= 2.16 (brings Keras 3), tf-keras (TF1 graph
code and Keras 2 `.h5` files), h5py, numpy. Run from the repository root:

    .venv/bin/python scripts/make_sample_ckpts.py

It rewrites every sample under sample_ckpts/ and sample_ckpts/expected.json (README.md is kept),
then reopens each file with `tf.train.load_checkpoint` / h5py, prints min / max of the moving
statistics per BN layer and asserts that each sample is as broken (or as healthy) as it claims.
Never run by the test suite; the outputs are committed. Takes well under a minute on 2 cores.

Every model is the same tiny net on the same synthetic task (4 classes: a bright blob in one of
the four quadrants of a noisy 8x8x1 image, offset and scaled so that BN inputs have means and
variances far from 0 / 1):

    conv 3x3x4 (no bias) -> BN -> relu -> conv 3x3x8 stride 2 (no bias) -> BN -> relu
    -> global average pool -> dense 8 (no bias) -> BN -> relu -> dense 4

Three BN layers: two on rank-4 inputs (fused path in TF1 / tf-keras), one on a rank-2 input.

Each group of samples runs in its own subprocess, because the Keras flavour (Keras 3 vs tf-keras)
is fixed by `TF_USE_LEGACY_KERAS` when TensorFlow is first imported.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "sample_ckpts"

STEPS = 300  # healthy runs: 1 - 0.99**300 = 95% of the way to the population statistics
SLIM_STEPS = 30  # slim decay 0.999: 1 - 0.999**30 = 3% of the way
BATCH = 32
SEED = 0

# sample path (relative to sample_ckpts/) -> what a correct audit must say.
# "findings" maps a rule code to the number of BN groups it fires on; codes not listed must not
# fire (ignoring info-level BN006 is *not* allowed either: no sample has near-zero variances).
EXPECTED: dict[str, dict[str, Any]] = {
    "tf1_update_ops_missing": {
        "format": "tf1-bundle",
        "bn_layers": 3,
        "findings": {"BN002": 3},
    },
    "tf1_healthy": {"format": "tf1-bundle", "bn_layers": 3, "findings": {}},
    "tf1_trainable_only_saver": {
        "format": "tf1-bundle",
        "bn_layers": 3,
        "findings": {"BN001": 3},
    },
    "tf1_slim_decay": {
        "format": "tf1-bundle",
        "bn_layers": 3,
        "findings": {"BN005": 3},
        "notes": "slim naming, scale=False: no gamma anywhere, which is legitimate",
    },
    "tf1_nan": {
        "format": "tf1-bundle",
        "bn_layers": 3,
        "findings": {"BN003": 1, "BN004": 1},
        "notes": "emulated: healthy training, then one NaN and one negative variance written",
    },
    "tf1_shape_mismatch": {
        "format": "tf1-bundle",
        "bn_layers": 1,
        "findings": {"BN007": 1},
        "notes": "emulated: hand-made variables, moving_variance has 3 channels, the rest 4",
    },
    "tf2_no_training_flag": {
        "format": "tf2-object",
        "bn_layers": 3,
        "findings": {"BN002": 3},
        "notes": "custom loop called model(x) without training=True: BN ran in inference mode",
    },
    "tf2_healthy": {"format": "tf2-object", "bn_layers": 3, "findings": {}},
    "keras3_healthy.keras": {"format": "keras3-zip", "bn_layers": 3, "findings": {}},
    "keras3_healthy.weights.h5": {"format": "keras3-weights-h5", "bn_layers": 3, "findings": {}},
    "keras3_broken.keras": {
        "format": "keras3-zip",
        "bn_layers": 3,
        "findings": {"BN002": 3},
        "notes": "same trained model as tf2_no_training_flag",
    },
    "keras3_broken.weights.h5": {
        "format": "keras3-weights-h5",
        "bn_layers": 3,
        "findings": {"BN002": 3},
        "notes": "same trained model as tf2_no_training_flag",
    },
    "keras2_healthy.h5": {"format": "keras2-h5", "bn_layers": 3, "findings": {}},
    "keras2_no_training_flag.h5": {
        "format": "keras2-h5",
        "bn_layers": 3,
        "findings": {"BN002": 3},
        "notes": "tf-keras custom loop called model(x) without training=True (not emulated)",
    },
    "savedmodel_healthy": {"format": "savedmodel", "bn_layers": 3, "findings": {}},
}

# part -> (needs tf-keras, samples it writes)
PARTS: dict[str, tuple[bool, list[str]]] = {
    "tf1": (
        True,
        [
            "tf1_update_ops_missing",
            "tf1_healthy",
            "tf1_trainable_only_saver",
            "tf1_slim_decay",
            "tf1_nan",
            "tf1_shape_mismatch",
        ],
    ),
    "tfkeras": (True, ["keras2_healthy.h5", "keras2_no_training_flag.h5", "savedmodel_healthy"]),
    "keras3": (
        False,
        [
            "tf2_no_training_flag",
            "tf2_healthy",
            "keras3_healthy.keras",
            "keras3_healthy.weights.h5",
            "keras3_broken.keras",
            "keras3_broken.weights.h5",
        ],
    ),
}


# ---------------------------------------------------------------------------------------------
# Data


def make_data(n: int = 1024, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
    """4-class blobs on 8x8x1 images; offset / scale keep BN inputs far from mean 0, var 1."""
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


def batches(x: np.ndarray, y: np.ndarray, steps: int, seed: int = SEED):
    rng = np.random.default_rng(seed + 1)
    for _ in range(steps):
        idx = rng.integers(0, len(x), BATCH)
        yield x[idx], y[idx]


def fresh(path: Path) -> Path:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()
    return path


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((np.argmax(logits, -1) == y).mean())


# ---------------------------------------------------------------------------------------------
# TF1 graph mode (tf.compat.v1.layers, Saver)


def _tf1_session(tf):  # type: ignore[no-untyped-def]
    cfg = tf.compat.v1.ConfigProto(intra_op_parallelism_threads=1, inter_op_parallelism_threads=1)
    return tf.compat.v1.Session(config=cfg)


def _tf1_net(tf, x, is_training):  # type: ignore[no-untyped-def]
    """The net with tf.compat.v1.layers: `batch_normalization[_N]/{gamma,beta,moving_*}`."""
    v1 = tf.compat.v1

    def init(seed: int):  # type: ignore[no-untyped-def]
        # explicit seeds: the layers' default initializers draw a fresh seed per run
        return v1.glorot_uniform_initializer(seed=seed)

    h = v1.layers.conv2d(x, 4, 3, padding="same", use_bias=False, kernel_initializer=init(1))
    h = tf.nn.relu(v1.layers.batch_normalization(h, training=is_training))
    h = v1.layers.conv2d(
        h, 8, 3, strides=2, padding="same", use_bias=False, kernel_initializer=init(2)
    )
    h = tf.nn.relu(v1.layers.batch_normalization(h, training=is_training))
    h = tf.reduce_mean(h, axis=[1, 2])
    h = v1.layers.dense(h, 8, use_bias=False, kernel_initializer=init(3))
    h = tf.nn.relu(v1.layers.batch_normalization(h, training=is_training))
    return v1.layers.dense(h, 4, kernel_initializer=init(4))


def _slim_net(tf, x, is_training):  # type: ignore[no-untyped-def]
    """slim-style: `scope/weights`, `scope/BatchNorm/{beta,moving_*}` (scale=False, decay .999)."""
    v1 = tf.compat.v1

    def bn(h):  # type: ignore[no-untyped-def]
        return v1.layers.batch_normalization(
            h, scale=False, momentum=0.999, epsilon=1e-3, training=is_training, name="BatchNorm"
        )

    init = v1.glorot_uniform_initializer()
    with v1.variable_scope("conv1"):
        w = v1.get_variable("weights", [3, 3, 1, 4], initializer=init)
        h = tf.nn.relu(bn(tf.nn.conv2d(x, w, 1, "SAME")))
    with v1.variable_scope("conv2"):
        w = v1.get_variable("weights", [3, 3, 4, 8], initializer=init)
        h = tf.nn.relu(bn(tf.nn.conv2d(h, w, 2, "SAME")))
    h = tf.reduce_mean(h, axis=[1, 2])
    with v1.variable_scope("fc3"):
        w = v1.get_variable("weights", [8, 8], initializer=init)
        h = tf.nn.relu(bn(tf.matmul(h, w)))
    with v1.variable_scope("logits"):
        w = v1.get_variable("weights", [8, 4], initializer=init)
        b = v1.get_variable("biases", [4], initializer=v1.zeros_initializer())
        return tf.matmul(h, w) + b


def tf1_train(
    out: Path,
    *,
    update_ops: bool = True,
    trainable_only: bool = False,
    slim: bool = False,
    corrupt: bool = False,
    meta: bool = False,
) -> None:
    import tensorflow as tf

    v1 = tf.compat.v1
    x_all, y_all = make_data()
    if slim:  # slim pipelines feed inputs preprocessed to about [-1, 1]
        x_all = (x_all - x_all.mean()) / x_all.std()
    g = tf.Graph()
    with g.as_default():
        v1.set_random_seed(SEED)
        x = v1.placeholder(tf.float32, [None, 8, 8, 1], name="x")
        y = v1.placeholder(tf.int64, [None], name="y")
        is_training = v1.placeholder_with_default(False, [], name="is_training")
        logits = (_slim_net if slim else _tf1_net)(tf, x, is_training)
        loss = v1.losses.sparse_softmax_cross_entropy(y, logits)
        global_step = v1.train.get_or_create_global_step()
        if slim:
            opt = v1.train.MomentumOptimizer(0.05, 0.9)
        else:
            opt = v1.train.AdamOptimizer(0.01)
        if update_ops:
            with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
                train_op = opt.minimize(loss, global_step=global_step)
        else:  # the bug: UPDATE_OPS never run, moving stats stay at their initial 0 / 1
            train_op = opt.minimize(loss, global_step=global_step)
        var_list = v1.trainable_variables() if trainable_only else None
        saver = v1.train.Saver(var_list=var_list, save_relative_paths=True)
        moving = [v for v in v1.global_variables() if "moving_" in v.name]
        with _tf1_session(tf) as sess:
            sess.run(v1.global_variables_initializer())
            for xb, yb in batches(x_all, y_all, SLIM_STEPS if slim else STEPS):
                sess.run(train_op, {x: xb, y: yb, is_training: True})
            acc_train = accuracy(sess.run(logits, {x: x_all, is_training: True}), y_all)
            acc_inf = accuracy(sess.run(logits, {x: x_all}), y_all)
            if corrupt:
                mv = [v for v in moving if v.name.endswith("moving_variance:0")]
                a = sess.run(mv[0])
                a[0] = np.nan
                b = sess.run(mv[1])
                b[1] = -0.5
                sess.run([mv[0].assign(a), mv[1].assign(b)])
            gb = {
                v.name: sess.run(v)
                for v in v1.trainable_variables()
                if v.name.split("/")[-1].split(":")[0] in ("gamma", "beta")
            }
            # the training graph's .meta is ~270 KB: keep it in one sample only
            saver.save(
                sess, str(out / "model.ckpt"), write_meta_graph=meta, strip_default_attrs=True
            )
    moved = max(float(np.abs(v - (1.0 if "gamma" in k else 0.0)).max()) for k, v in gb.items())
    print(
        f"  {out.name}: acc train-mode {acc_train:.2f} inference-mode {acc_inf:.2f}, "
        f"gamma/beta moved up to {moved:.3f}"
    )


def tf1_shape_mismatch(out: Path) -> None:
    """Hand-made BN variables whose moving_variance lost a channel (e.g. a bad surgery script)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(SEED)
    g = tf.Graph()
    with g.as_default(), v1.variable_scope("net/bn"):
        vals = {
            "gamma": 1.0 + 0.2 * rng.standard_normal(4),
            "beta": 0.2 * rng.standard_normal(4),
            "moving_mean": 1.0 + rng.standard_normal(4),
            "moving_variance": 2.0 + rng.random(3),  # 3 channels where the layer has 4
        }
        for name, val in vals.items():
            v1.get_variable(
                name, initializer=tf.constant(val, tf.float32), trainable=name in ("gamma", "beta")
            )
        saver = v1.train.Saver(save_relative_paths=True)
        with _tf1_session(tf) as sess:
            sess.run(v1.global_variables_initializer())
            saver.save(sess, str(out / "model.ckpt"), strip_default_attrs=True)


def part_tf1() -> None:
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    jobs = {
        "tf1_update_ops_missing": dict(update_ops=False, meta=True),
        "tf1_healthy": dict(),
        "tf1_trainable_only_saver": dict(trainable_only=True),
        "tf1_slim_decay": dict(slim=True),
        "tf1_nan": dict(corrupt=True),
    }
    for name, kw in jobs.items():
        out = fresh(OUT / name)
        out.mkdir(parents=True)
        tf1_train(out, **kw)  # type: ignore[arg-type]
    out = fresh(OUT / "tf1_shape_mismatch")
    out.mkdir(parents=True)
    tf1_shape_mismatch(out)


# ---------------------------------------------------------------------------------------------
# Keras (both flavours: `keras` is Keras 3 or tf-keras, chosen by the caller)


def build_model(keras, bn_names: tuple[str, str, str] | None = None):  # type: ignore[no-untyped-def]
    L = keras.layers
    names = bn_names or (None, None, None)
    return keras.Sequential(
        [
            keras.Input((8, 8, 1)),
            L.Conv2D(4, 3, padding="same", use_bias=False),
            L.BatchNormalization(name=names[0]),
            L.ReLU(),
            L.Conv2D(8, 3, strides=2, padding="same", use_bias=False),
            L.BatchNormalization(name=names[1]),
            L.ReLU(),
            L.GlobalAveragePooling2D(),
            L.Dense(8, use_bias=False),
            L.BatchNormalization(name=names[2]),
            L.ReLU(),
            L.Dense(4),
        ]
    )


def custom_loop(tf, keras, model, training: bool):  # type: ignore[no-untyped-def]
    """GradientTape loop; with training=False this is the classic TF2 bug (BN in inference mode)."""
    x_all, y_all = make_data()
    opt = keras.optimizers.Adam(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(xb, yb):  # type: ignore[no-untyped-def]
        with tf.GradientTape() as tape:
            # the broken variant calls model(xb): BN normalizes with moving stats, never updates
            logits = model(xb, training=True) if training else model(xb)
            loss = loss_fn(yb, logits)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables, strict=True))

    for xb, yb in batches(x_all, y_all, STEPS):
        step(tf.constant(xb), tf.constant(yb))
    return opt


def fit(keras, model) -> None:  # type: ignore[no-untyped-def]
    x_all, y_all = make_data()
    idx = np.concatenate([i for _, i in _batch_indices(len(x_all), STEPS)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    model.fit(x_all[idx], y_all[idx], batch_size=BATCH, epochs=1, shuffle=False, verbose=0)


def _batch_indices(n: int, steps: int):
    rng = np.random.default_rng(SEED + 1)
    for s in range(steps):
        yield s, rng.integers(0, n, BATCH)


def report_keras(name: str, model) -> None:  # type: ignore[no-untyped-def]
    x_all, y_all = make_data()
    acc = accuracy(np.asarray(model(x_all, training=False)), y_all)
    bns = [layer for layer in model.layers if "BatchNormalization" in type(layer).__name__]
    moved = max(
        max(float(np.abs(np.asarray(bn.gamma) - 1).max()), float(np.abs(np.asarray(bn.beta)).max()))
        for bn in bns
    )
    print(f"  {name}: acc inference-mode {acc:.2f}, gamma/beta moved up to {moved:.3f}")


def _seed(tf, keras) -> None:  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(SEED)
    if hasattr(keras.backend, "clear_session"):
        keras.backend.clear_session()
    keras.utils.set_random_seed(SEED)


def part_tfkeras() -> None:
    import tensorflow as tf
    import tf_keras as keras

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    _seed(tf, keras)
    healthy = build_model(keras)
    fit(keras, healthy)
    report_keras("keras2_healthy.h5", healthy)
    healthy.save(str(fresh(OUT / "keras2_healthy.h5")), save_format="h5")
    tf.saved_model.save(healthy, str(fresh(OUT / "savedmodel_healthy")))

    _seed(tf, keras)
    broken = build_model(keras)
    custom_loop(tf, keras, broken, training=False)
    report_keras("keras2_no_training_flag.h5", broken)
    broken.save(str(fresh(OUT / "keras2_no_training_flag.h5")), save_format="h5")


def part_keras3() -> None:
    import keras
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    # readable names that differ from the class-based `.weights.h5` paths, on purpose
    names = ("bn_conv1", "bn_conv2", "bn_head")

    _seed(tf, keras)
    healthy = build_model(keras, names)
    fit(keras, healthy)
    report_keras("keras3_healthy", healthy)
    healthy.save(fresh(OUT / "keras3_healthy.keras"))
    healthy.save_weights(fresh(OUT / "keras3_healthy.weights.h5"))

    for training, name in ((True, "tf2_healthy"), (False, "tf2_no_training_flag")):
        _seed(tf, keras)
        model = build_model(keras, names)
        opt = custom_loop(tf, keras, model, training=training)
        report_keras(name, model)
        out = fresh(OUT / name)
        out.mkdir(parents=True)
        tf.train.Checkpoint(model=model, optimizer=opt).save(str(out / "ckpt"))
        if not training:
            model.save(fresh(OUT / "keras3_broken.keras"))
            model.save_weights(fresh(OUT / "keras3_broken.weights.h5"))


# ---------------------------------------------------------------------------------------------
# Verification: reopen every file the way a user's tools would, print the moving statistics


def _bundle_stats(prefix: str) -> dict[str, dict[str, np.ndarray]]:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    layers: dict[str, dict[str, np.ndarray]] = {}
    for key in reader.get_variable_to_shape_map():
        if ".OPTIMIZER_SLOT" in key:
            continue
        parts = key.split("/")
        for stat in ("moving_mean", "moving_variance"):
            if stat in parts:
                layer = "/".join(parts[: parts.index(stat)])
                layers.setdefault(layer, {})[stat] = reader.get_tensor(key)
    return layers


def _h5_stats(f) -> dict[str, dict[str, np.ndarray]]:  # type: ignore[no-untyped-def]
    layers: dict[str, dict[str, np.ndarray]] = {}
    # Keras 3 weights: layers/<class_snake>[_N]/vars/<i>; BN vars: gamma, beta, mean, variance
    if "layers" in f:
        for lname, grp in f["layers"].items():
            if lname.startswith("batch_normalization"):
                v = grp["vars"]
                label = f"{lname} ({v.attrs.get('name', '?')})"
                layers[label] = {
                    "moving_mean": v[str(len(v) - 2)][()],
                    "moving_variance": v[str(len(v) - 1)][()],
                }
        return layers

    def visit(name: str, obj) -> None:  # type: ignore[no-untyped-def]
        if name.startswith("optimizer_weights"):
            return
        for stat in ("moving_mean", "moving_variance"):
            if name.split("/")[-1].startswith(stat):
                layers.setdefault(name.rsplit("/", 1)[0], {})[stat] = obj[()]

    f.visititems(visit)
    return layers


def sample_stats(rel: str) -> dict[str, dict[str, np.ndarray]]:
    import h5py

    path = OUT / rel
    if rel.endswith(".keras"):
        with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5"))) as f:
            return _h5_stats(f)
    if rel.endswith(".h5"):
        with h5py.File(path, "r") as f:
            return _h5_stats(f)
    if (path / "saved_model.pb").exists():
        return _bundle_stats(str(path / "variables" / "variables"))
    import tensorflow as tf

    return _bundle_stats(tf.train.latest_checkpoint(str(path)))


def count_bn_layers_tf1_trainable_only(rel: str) -> int:
    import tensorflow as tf

    reader = tf.train.load_checkpoint(str(OUT / rel / "model.ckpt"))
    return sum(k.endswith("/beta") for k in reader.get_variable_to_shape_map())


def verify() -> None:
    problems = []
    for rel, exp in EXPECTED.items():
        stats = sample_stats(rel)
        findings = exp["findings"]
        print(f"{rel}  [{exp['format']}]  expected {findings or 'clean'}")
        for layer, s in sorted(stats.items()):
            mm, mv = s.get("moving_mean"), s.get("moving_variance")
            print(
                f"    {layer:45s} mean [{np.nanmin(mm):+.4f}, {np.nanmax(mm):+.4f}]  "
                f"var [{np.nanmin(mv):+.4f}, {np.nanmax(mv):+.4f}]"
                + ("  NaN!" if np.isnan(mv).any() else "")
            )
        n = len(stats) if stats else count_bn_layers_tf1_trainable_only(rel)
        if n != exp["bn_layers"]:
            problems.append(f"{rel}: {n} BN layers, expected {exp['bn_layers']}")
        if "BN001" in findings:
            if stats:
                problems.append(f"{rel}: moving stats present")
            continue
        if "BN007" in findings:
            continue
        exact = [
            np.all(s["moving_mean"] == 0) and np.all(s["moving_variance"] == 1)
            for s in stats.values()
        ]
        if sum(exact) != findings.get("BN002", 0):
            problems.append(f"{rel}: {sum(exact)} layers exactly 0/1")
        near = [
            not e
            and np.nanmax(np.abs(s["moving_mean"])) < 0.05
            and np.nanmax(np.abs(s["moving_variance"] - 1)) < 0.05
            for e, s in zip(exact, stats.values(), strict=True)
        ]
        if sum(near) != findings.get("BN005", 0):
            problems.append(f"{rel}: {sum(near)} layers barely moved")
        nan = sum(bool(np.isnan(s["moving_variance"]).any()) for s in stats.values())
        neg = sum(bool((s["moving_variance"] < 0).any()) for s in stats.values())
        if nan != findings.get("BN003", 0) or neg != findings.get("BN004", 0):
            problems.append(f"{rel}: {nan} NaN layers, {neg} negative-variance layers")
        tiny = sum(bool((np.abs(s["moving_variance"]) < 1e-3).any()) for s in stats.values())
        if tiny:
            problems.append(f"{rel}: {tiny} layers with near-zero variance")
    size = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    print(f"sample_ckpts/ total size: {size / 1024:.0f} KiB")
    if problems:
        raise SystemExit("verification failed:\n  " + "\n  ".join(problems))
    print("all samples verified")


# ---------------------------------------------------------------------------------------------


def write_calibration_data() -> None:
    """Small labelled sets from the training distribution, so a new user can try
    `ckptdoc recalibrate` on the broken samples (seeds differ from the training data)."""
    (OUT / "data").mkdir(exist_ok=True)
    for name, seed in (("calib", SEED + 100), ("heldout", SEED + 200)):
        x, y = make_data(256, seed=seed)
        np.savez_compressed(OUT / "data" / f"{name}.npz", x=x, y=y)


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "--data-only":
        write_calibration_data()
        return
    if len(sys.argv) == 3 and sys.argv[1] == "--part":
        {"tf1": part_tf1, "tfkeras": part_tfkeras, "keras3": part_keras3, "verify": verify}[
            sys.argv[2]
        ]()
        return
    OUT.mkdir(exist_ok=True)
    base = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "PYTHONHASHSEED": "0",
        "CUDA_VISIBLE_DEVICES": "",
        "TF_DETERMINISTIC_OPS": "1",
    }
    base.pop("TF_USE_LEGACY_KERAS", None)
    for part, (legacy, _) in PARTS.items():
        print(f"== {part}", flush=True)
        env = {**base, "TF_USE_LEGACY_KERAS": "1"} if legacy else base
        subprocess.run([sys.executable, __file__, "--part", part], env=env, check=True)
    (OUT / "expected.json").write_text(json.dumps(EXPECTED, indent=2, sort_keys=True) + "\n")
    write_calibration_data()
    print("== verify", flush=True)
    subprocess.run([sys.executable, __file__, "--part", "verify"], env=base, check=True)


if __name__ == "__main__":
    main()
