"""Load Keras files with Keras itself and dump every layer variable to an .npz (test helper).

Run as a subprocess: Keras 3 and tf-keras cannot share one process.
    python tests/keras_reference.py keras3  OUT.npz FILE [FILE...]
    python tests/keras_reference.py tfkeras OUT.npz FILE [FILE...]
Keys: `<file name>::<outer>/<layer>/<variable>` and `<file name>::<outer>/<layer>/#<i>`
(`#i` = position in the order Keras 3 saves: trainable, then non-trainable).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def _walk(model, prefix: str, out: dict, tag: str) -> None:  # type: ignore[no-untyped-def]
    for layer in model.layers:
        if hasattr(layer, "layers") and layer.layers:
            _walk(layer, f"{prefix}{layer.name}/", out, tag)
            continue
        base = f"{tag}::{prefix}{layer.name}"
        variables = list(layer.trainable_weights) + list(layer.non_trainable_weights)
        for i, v in enumerate(variables):
            short = v.name.split("/")[-1].split(":")[0]
            out[f"{base}/{short}"] = v.numpy()
            out[f"{base}/#{i}"] = v.numpy()


def main(argv: list[str]) -> None:
    import numpy as np

    flavour, out_path, files = argv[1], argv[2], argv[3:]
    if flavour == "tfkeras":
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        import tf_keras as keras
    else:
        os.environ.pop("TF_USE_LEGACY_KERAS", None)
        import keras
    out: dict = {}
    for f in files:
        p = Path(f)
        if p.name.endswith(".weights.h5"):
            # Keras 3 weights file: build the architecture from its sibling .keras, then load.
            model = keras.saving.load_model(str(p).replace(".weights.h5", ".keras"))
            model.load_weights(str(p))
        elif flavour == "tfkeras" and "weights-only" in p.name:
            model = keras.models.load_model(str(p).replace(".weights-only.h5", ".h5"))
            model.load_weights(str(p))
        else:
            model = keras.models.load_model(str(p), compile=False)
        _walk(model, "", out, p.name)
    np.savez(out_path, **out)


if __name__ == "__main__":
    main(sys.argv)


# ----------------------------------------------------------------------------- used by tests

_HERE = Path(__file__).resolve()
_CACHE: dict[tuple[str, tuple[str, ...]], dict] = {}


def reference_values(flavour: str, files: list[Path], tmp_dir: Path) -> dict:
    """What Keras itself loads from `files` (one subprocess per flavour and file set)."""
    import subprocess

    import numpy as np

    key = (flavour, tuple(str(f) for f in files))
    if key not in _CACHE:
        out = tmp_dir / f"ref_{flavour}_{len(_CACHE)}.npz"
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
        env.pop("TF_USE_LEGACY_KERAS", None)
        proc = subprocess.run(
            [sys.executable, str(_HERE), flavour, str(out), *map(str, files)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        with np.load(out) as data:
            _CACHE[key] = {k: data[k] for k in data.files}
    return _CACHE[key]


def assert_matches_reference(ckpt, tag: str, ref: dict) -> int:  # type: ignore[no-untyped-def]
    """Every member of every layer equals, bit for bit, what Keras loaded; returns the count."""
    import numpy as np

    checked = 0
    for node in ckpt.layers:
        for i, (member, tkey) in enumerate(node.members.items()):
            rkey = (
                f"{tag}::{node.name}/#{i}"
                if member.startswith("vars/")
                else (f"{tag}::{node.name}/{member}")
            )
            assert rkey in ref, f"{rkey} not loaded by Keras ({node.name}: {dict(node.members)})"
            ours, theirs = ckpt.read(tkey), ref[rkey]
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, rkey
            assert ours.tobytes() == theirs.tobytes(), rkey
            assert np.array_equal(ours, ref[f"{tag}::{node.name}/#{i}"]), f"order of {rkey}"
            checked += 1
    n_ref = sum(1 for k in ref if k.startswith(f"{tag}::") and "/#" in k)
    assert checked == n_ref, f"{tag}: checked {checked} of {n_ref} variables Keras loaded"
    return checked
