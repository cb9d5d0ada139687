"""Load a model file for recalibration, refusing embedded code unless the user opts in.

Kinds: `keras-zip` (`.keras`), `keras3-weights` (`.weights.h5`), `legacy-h5-full` (Keras 2 /
tf-keras / Keras 3 legacy full-model `.h5`), `legacy-h5-weights` (`save_weights` `.h5`).
Weights-only kinds need `--model module:function` (or `file.py:function`) returning the
architecture. Keras is imported lazily.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ckptdoc.errors import (
    CheckpointError,
    NotFoundError,
    UnsafeCheckpointError,
    UnsupportedFormatError,
)
from ckptdoc.recalibrate.data import load_callable
from ckptdoc.recalibrate.errors import RecalibrationError

KERAS_WEIGHTS_MEMBER = "model.weights.h5"
FULL_KINDS = ("keras-zip", "legacy-h5-full")


@dataclass
class ModelFile:
    path: Path
    kind: str
    model: Any


def detect_kind(path: Path) -> str:
    if not path.exists():
        raise NotFoundError(path, "no such file")
    if path.is_dir():
        raise UnsupportedFormatError(
            path,
            "a folder (SavedModel / TF checkpoint): recalibrate takes .keras, .h5 or "
            ".weights.h5 files",
        )
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as zf:
                names = set(zf.namelist())
        except zipfile.BadZipFile as exc:
            raise UnsupportedFormatError(path, f"damaged zip: {exc}") from exc
        if "config.json" in names and KERAS_WEIGHTS_MEMBER in names:
            return "keras-zip"
        raise UnsupportedFormatError(
            path, f"a zip without config.json and {KERAS_WEIGHTS_MEMBER}: not a .keras model"
        )
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if "model_config" in f.attrs:
                return "legacy-h5-full"
            if "layer_names" in f.attrs or "layer_names0" in f.attrs:
                return "legacy-h5-weights"
            if "layers" in f or "vars" in f:
                return "keras3-weights"
    except OSError as exc:
        raise UnsupportedFormatError(path, f"not an HDF5 or .keras file ({exc})") from exc
    raise UnsupportedFormatError(path, "an HDF5 file that holds no Keras model or weights")


def model_config_json(path: Path, kind: str) -> Any:
    """The architecture JSON stored in a full-model file (read as data, never executed)."""
    if kind == "keras-zip":
        with zipfile.ZipFile(path) as zf:
            return json.loads(zf.read("config.json"))
    if kind == "legacy-h5-full":
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs["model_config"]
            return json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw)
    return None


def find_code_layers(config: Any) -> list[str]:
    """Names of layers whose config carries Python code (a `Lambda` layer, or a serialized
    Python lambda as an activation): the audit's CK001 walker, so the audit's warning and
    this refusal always agree."""
    from ckptdoc.rules.code import CODE_CLASSES, code_findings

    return [f.group for f in code_findings(config) if f.details.get("class_name") in CODE_CLASSES]


@contextlib.contextmanager
def _named_for_keras(path: Path, kind: str) -> Iterator[Path]:
    """Keras picks the weights reader by file name: give it a name it understands."""
    if kind == "keras3-weights" and not path.name.endswith(".weights.h5"):
        with tempfile.TemporaryDirectory() as d:
            link = Path(d) / "model.weights.h5"
            link.symlink_to(path.resolve())
            yield link
    else:
        yield path


def build_model(model_spec: str) -> Any:
    """Call the user's `--model module:function`; it must return a built keras.Model."""
    import keras

    fn = load_callable(model_spec, "--model")
    try:
        model = fn()
    except Exception as exc:
        raise RecalibrationError(
            f"--model {model_spec}: the function raised {type(exc).__name__}: {exc}"
        ) from exc
    if not isinstance(model, keras.Model):
        raise RecalibrationError(
            f"--model {model_spec}: returned a {type(model).__name__}, not a keras.Model"
        )
    if not model.built:
        raise RecalibrationError(
            f"--model {model_spec}: the model is not built; give it an Input or call "
            "model.build(input_shape) before returning it"
        )
    return model


def load(
    path: str | Path, *, model_spec: str | None = None, allow_unsafe: bool = False
) -> ModelFile:
    """Build the model for `path`; user mistakes raise CheckpointError / RecalibrationError."""
    path = Path(path)
    kind = detect_kind(path)
    import keras

    if model_spec is not None:
        model = build_model(model_spec)
        try:
            with _named_for_keras(path, kind) as p:
                model.load_weights(str(p))
        except Exception as exc:  # Keras raises ValueError / KeyError etc. on mismatch
            raise CheckpointError(
                path, f"the weights do not fit the --model architecture: {exc}"
            ) from exc
        return ModelFile(path, kind, model)
    if kind not in FULL_KINDS:
        raise RecalibrationError(
            f"{path} holds weights only: pass --model module:function (or file.py:function) "
            "that builds the architecture"
        )
    code_layers = find_code_layers(model_config_json(path, kind))
    if code_layers and not allow_unsafe:
        raise UnsafeCheckpointError(
            path,
            f"Lambda layer(s) {', '.join(code_layers)} hold Python code that would run on load; "
            "refusing. Pass --allow-unsafe-code only if you trust this file",
        )
    try:
        with synchronized_bn_as_plain():
            model = keras.saving.load_model(
                str(path),
                compile=False,
                safe_mode=not allow_unsafe,
                custom_objects=_legacy_custom_objects() if kind == "legacy-h5-full" else None,
            )
    except Exception as exc:
        newer = _saved_by_newer_keras(path, kind, keras.__version__)
        if newer is not None:  # Keras's own error is ~25 lines about the config
            raise CheckpointError(path, newer) from exc
        hint = ""
        if "locate class" in str(exc) or "Unknown layer" in str(exc):
            hint = (" (a custom class from your code: pass --import MODULE, the module that "
                    "defines and registers it with keras.saving.register_keras_serializable)")
        raise CheckpointError(
            path, f"Keras could not load the model: {type(exc).__name__}: {exc}{hint}"
        ) from exc
    return ModelFile(path, kind, model)


def _saved_by_newer_keras(path: Path, kind: str, installed: str) -> str | None:
    """"saved by Keras X, installed Y" when a `.keras` file's metadata says it comes from a
    newer Keras than the one installed, else None."""
    if kind != "keras-zip":
        return None
    import json
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo("metadata.json")
            if info.file_size > 1 << 20:
                return None
            saved = str(json.loads(zf.read(info)).get("keras_version", ""))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, AttributeError):
        return None
    if _version(saved) > _version(installed):
        return (f"saved by Keras {saved}, and Keras {installed} is installed: a newer Keras "
                "writes configs an older one cannot read. Upgrade it (`pip install -U keras`) "
                "and run again")
    return None


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit()) or "0"
        parts.append(int(digits))
    return tuple(parts)


def _legacy_custom_objects() -> dict[str, Any]:
    """tf-keras class names Keras 3 dropped, mapped to their Keras 3 equivalents."""
    import keras

    class SyncBatchNormalization(keras.layers.BatchNormalization):  # type: ignore[misc]
        def __init__(self, **kwargs: Any) -> None:
            kwargs.pop("fused", None)
            if keras.backend.backend() == "tensorflow":
                kwargs.setdefault("synchronized", True)
            super().__init__(**kwargs)

    return {"SyncBatchNormalization": SyncBatchNormalization}


@contextlib.contextmanager
def synchronized_bn_as_plain() -> Iterator[None]:
    """On the JAX and PyTorch backends, build `synchronized=True` BN layers (which Keras
    refuses there) as plain BN while a model loads: recalibration measures the statistics
    itself, over every replica, so the layer's own synchronization plays no part; the file is
    patched, not re-saved, so its config keeps `synchronized=True`. Keras deserializes its own
    classes by module path, past `custom_objects`, hence the scoped wrapper of `__init__`."""
    import keras

    cls = keras.layers.BatchNormalization
    if keras.backend.backend() == "tensorflow":
        yield
        return
    original = cls.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("synchronized", None)
        original(self, *args, **kwargs)

    cls.__init__ = init
    try:
        yield
    finally:
        cls.__init__ = original
