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
