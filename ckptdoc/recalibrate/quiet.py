"""Import TensorFlow without its start-up chatter on the user's terminal.

TF 2.x's C++ runtime logs oneDNN / CUDA notices before absl logging is initialised, so
TF_CPP_MIN_LOG_LEVEL cannot silence them; the only way is to point file descriptor 2 elsewhere
while the import runs. Python-level errors are still raised (after stderr is restored).
"""

from __future__ import annotations

import os
import sys


def import_tensorflow_quietly() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
            try:
                import tensorflow as tf

                tf.get_logger().setLevel("ERROR")
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def prepare_framework(kind: str) -> None:
    """TensorFlow, imported without its start-up chatter, where running a target of `kind`
    needs it: every TF checkpoint, and Keras files on the TensorFlow backend. ImportError
    (with the install hint) when it is missing."""
    from ckptdoc.install_hint import install_hint

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if kind == "keras-file" and backend != "tensorflow":
        return  # Keras and its backend load with the model (backends.current says what is missing)
    try:
        import_tensorflow_quietly()
    except ImportError as exc:
        raise ImportError(f"running the model needs TensorFlow ({exc}); install it with "
                          f"{install_hint('recalibrate')}") from None


def import_user_module(module: str) -> None:
    """`--import my_pkg.layers`: run before loading, so classes it registers with
    `keras.saving.register_keras_serializable` resolve. The user's code: it runs as given."""
    import importlib

    sys.path.insert(0, os.getcwd())  # as `python -m` would find the user's package
    importlib.import_module(module)
