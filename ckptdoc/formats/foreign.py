"""Files that are not TensorFlow or Keras checkpoints but sit beside them: model files of other
frameworks, and Git LFS pointers standing in for a model. Recognised by name and first bytes
(never parsed, never unpickled) so that a scan can say what each skipped file is, and a
pointer can say how to fetch the real file. Knows nothing about batch norm.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["FOREIGN_SUFFIXES", "foreign_format", "lfs_pointer"]

#: Extensions of other frameworks' model files a folder scan lists as skipped.
FOREIGN_SUFFIXES = (".pt", ".pth", ".ckpt", ".onnx", ".tflite")

_LFS = b"version https://git-lfs.github.com/spec/v1"


def lfs_pointer(path: Path) -> bool:
    """A Git LFS pointer file (the model was never fetched: `git lfs pull`)."""
    try:
        with open(path, "rb") as f:
            return f.read(len(_LFS)) == _LFS
    except OSError:
        return False


def foreign_format(path: Path) -> str | None:
    """What a file of another framework is ("a PyTorch checkpoint", ...), or None for a file
    ckptdoc may read (or does not know)."""
    if not path.is_file() or path.is_symlink():
        return None
    name = path.name.lower()
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head[4:8] == b"TFL3":
        return "a TensorFlow Lite model (no training statistics to audit: BN is folded in)"
    if name.endswith(".onnx"):
        return "an ONNX model"
    if head[:2] in (b"\x80\x02", b"\x80\x04", b"\x80\x05") and name.endswith(
            (".pt", ".pth", ".ckpt", ".bin", ".tar")):
        return ("a PyTorch checkpoint in the legacy pickle format (before torch 1.6; "
                "ckptdoc reads torch.save's zip format: re-save it with a current torch)")
    return None
