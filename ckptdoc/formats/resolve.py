"""Turn whatever path a user passes into one checkpoint: which format, and which file(s).

TensorFlow users point at checkpoints in many ways: the prefix (`model.ckpt`), one of its files
(`.index`, `.data-00000-of-00002`, `.meta`), the training directory (with or without a
`checkpoint` state file, often holding another machine's absolute path), or a SavedModel
directory. Keras files are recognised by extension and by magic bytes. Resolution only looks at
names and a few leading bytes; readers validate contents.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ckptdoc.errors import NotFoundError, SkippedFileError, UnsupportedFormatError

Kind = Literal["bundle", "savedmodel", "hdf5", "keras-zip", "torch", "safetensors"]

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
ZIP_MAGIC = b"PK\x03\x04"
_TABLE_MAGIC_BYTES = bytes.fromhex("57fb808b247547db")  # LevelDB table footer, little-endian
#: A data shard's file name; `prefix` is empty for checkpoints written with an empty prefix.
DATA_SHARD_RE = re.compile(r"^(?P<prefix>.*)\.data-\d{5}-of-\d{5}$")
_STATE_RE = re.compile(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', re.MULTILINE)
_STEP_RE = re.compile(r"(\d+)$")

EXPECTED = (
    "expected a TensorFlow checkpoint prefix or its .index/.data-*/.meta file, a checkpoint "
    "or SavedModel directory, or a Keras .h5/.hdf5/.weights.h5/.keras file"
)


@dataclass(frozen=True)
class Resolved:
    """What `path` turned out to be.

    For bundles `path` is the prefix (`dir/model.ckpt`); a bundle whose files are literally
    named `.index` / `.data-*` (empty prefix) is given as the directory itself. For SavedModels
    it is the variables prefix `dir/variables/variables`.
    """

    kind: Kind
    path: Path
    notes: tuple[str, ...] = ()


def bundle_file(prefix: Path, suffix: str) -> Path:
    """The file `prefix + suffix`, or `dir/suffix` for an empty-prefix bundle (prefix = dir)."""
    sibling = prefix.parent / (prefix.name + suffix)
    if prefix.is_dir() and not sibling.exists():
        return prefix / suffix
    return sibling


def tf_prefix(prefix: Path) -> str:
    """`prefix` as TensorFlow's readers spell it: an empty-prefix bundle (files literally named
    `.index` / `.data-*` in a folder, given as the folder) is `folder/`."""
    if prefix.is_dir() and not (prefix.parent / (prefix.name + ".index")).exists():
        return str(prefix) + os.sep
    return str(prefix)


def _strip(name: str, suffix: str) -> str:
    return name[: -len(suffix)] if suffix else name


def _prefix_path(path: Path, prefix_name: str) -> Path:
    # An empty prefix means the files live directly in the directory: represent it by the dir.
    return path.parent / prefix_name if prefix_name else path.parent


def _sniff(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(8)
    except OSError:
        return b""


def _tail(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            if f.seek(0, 2) < 48:
                return b""
            f.seek(-8, 2)
            return f.read(8)
    except OSError:
        return b""


def _unescape(text: str) -> str:
    """Undo text-proto C escaping; non-ASCII bytes come as octal escapes of UTF-8."""
    try:
        raw = text.encode("latin-1", errors="backslashreplace").decode("unicode_escape")
        return raw.encode("latin-1").decode("utf-8")
    except (UnicodeError, ValueError):
        return text


def _step_key(p: Path) -> tuple[float, int, str]:
    m = _STEP_RE.search(p.name[: -len(".index")])
    step = int(m.group(1)) if m else -1
    return (p.stat().st_mtime, step, p.name)


def is_savedmodel_dir(path: Path) -> bool:
    """A SavedModel folder: its graph file, or at least its `variables/` bundle."""
    return (path / "variables" / "variables.index").is_file() or any(
        (path / pb).is_file() for pb in ("saved_model.pb", "saved_model.pbtxt")
    )


def _resolve_dir(path: Path) -> Resolved:
    if is_savedmodel_dir(path):
        if not (path / "variables" / "variables.index").is_file():
            raise NotFoundError(
                path,
                "SavedModel has no variables/variables.index (a model without "
                "variables, or the variables folder was not copied)",
            )
        return Resolved("savedmodel", path / "variables" / "variables")
    notes: list[str] = []
    state = path / "checkpoint"
    if state.is_file():
        m = _STATE_RE.search(state.read_text(encoding="utf-8", errors="replace"))
        if m:
            recorded = _unescape(m.group(1))
            target = Path(recorded)
            if not target.is_absolute():
                target = path / target
            # The state file is as untrusted as the rest: one pointing at a checkpoint out
            # of its folder (a copy of the run elsewhere, `../../other`) is not followed, so
            # neither `ls` nor recalibrate reads or writes beside a checkpoint not named.
            exists = bool(target.name) and bundle_file(target, ".index").is_file()
            outside = exists and not target.resolve().is_relative_to(path.resolve())
            if exists and not outside:
                return Resolved("bundle", target)
            if outside:
                notes.append(
                    f"{state}: model_checkpoint_path {recorded!r} points outside this folder "
                    "and is not followed; name that checkpoint to read it")
            by_name = path / Path(recorded.replace("\\", "/")).name
            if by_name.name and bundle_file(by_name, ".index").is_file():
                notes.append(
                    f"{path}: using {by_name.name!r} from this folder" if outside else
                    f"{state}: model_checkpoint_path {recorded!r} does not exist here; "
                    f"using {by_name.name!r} from this folder"
                )
                return Resolved("bundle", by_name, tuple(notes))
            if not outside:
                notes.append(
                    f"{state}: model_checkpoint_path {recorded!r} does not exist here or in "
                    "this folder"
                )
    indexes = [p for p in path.glob("*.index") if p.is_file() and p.name != ".index"]
    if indexes:
        chosen = max(indexes, key=_step_key)
        if len(indexes) > 1 or notes:
            notes.append(
                f"{path}: using the newest checkpoint {chosen.name[: -len('.index')]!r} "
                f"of {len(indexes)} in this folder"
            )
        return Resolved("bundle", chosen.parent / chosen.name[: -len(".index")], tuple(notes))
    if (path / ".index").is_file():
        return Resolved("bundle", path, tuple(notes))
    why = "".join(f"; {n}" for n in notes)
    raise UnsupportedFormatError(path, f"no checkpoint found in this directory{why}; {EXPECTED}")


def resolve(path: Path) -> Resolved:
    """Classify `path`. Raises NotFoundError or UnsupportedFormatError naming the path."""
    path = Path(path)
    if path.is_dir():
        return _resolve_dir(path)
    name = path.name
    if path.is_file():
        _refuse_foreign(path)
        if name.endswith(".index"):
            return Resolved("bundle", _prefix_path(path, _strip(name, ".index")))
        m = DATA_SHARD_RE.match(name)
        if m:
            prefix = _prefix_path(path, m.group("prefix"))
            if not bundle_file(prefix, ".index").is_file():
                raise NotFoundError(
                    path,
                    f"the bundle index {bundle_file(prefix, '.index')} "
                    "is missing; the data shard alone cannot be read",
                )
            return Resolved("bundle", prefix)
        if name.endswith(".meta"):
            prefix = _prefix_path(path, _strip(name, ".meta"))
            if not bundle_file(prefix, ".index").is_file():
                raise NotFoundError(
                    path,
                    f"a .meta graph holds no variable values and "
                    f"{bundle_file(prefix, '.index')} is missing",
                )
            return Resolved("bundle", prefix)
        lower = name.lower()
        magic = _sniff(path)
        if lower.endswith((".h5", ".hdf5")) or magic == HDF5_MAGIC:
            return Resolved("hdf5", path)
        if magic[:4] == ZIP_MAGIC and not lower.endswith(".keras") and _is_torch_zip(path):
            return Resolved("torch", path)
        if lower.endswith(".safetensors"):
            return Resolved("safetensors", path)
        if lower.endswith(".keras") or magic[:4] == ZIP_MAGIC:
            return Resolved("keras-zip", path)
        if (path.parent / (name + ".index")).is_file():
            return Resolved("bundle", path)
        if _tail(path) == _TABLE_MAGIC_BYTES:
            # A table that is not a bundle's .index: the pre-2017 single-file V1 Saver format.
            raise UnsupportedFormatError(
                path,
                "legacy TensorFlow V1 checkpoint (single-file SavedTensorSlices) is not "
                "supported; re-save it with a TF2 Saver (V2 format) and audit the .index",
            )
        raise UnsupportedFormatError(path, f"unrecognised file; {EXPECTED}")
    # Not a file or folder: a bundle prefix names files that start with it.
    if (path.parent / (name + ".index")).is_file():
        return Resolved("bundle", path)
    if path.parent.is_dir() and any(path.parent.glob(glob_escape(name) + ".data-*-of-*")):
        raise NotFoundError(path, f"data shards exist but the index {name}.index is missing")
    raise NotFoundError(path, "no such file, directory or checkpoint prefix")


_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin")


def _is_torch_zip(path: Path) -> bool:
    from ckptdoc.formats.torch_zip import is_torch_zip

    return not path.is_symlink() and is_torch_zip(path)


def _refuse_foreign(path: Path) -> None:
    """A Git LFS pointer or another framework's model file, said as what it is (not
    "unrecognised", not a damaged Keras archive)."""
    from ckptdoc.formats.foreign import foreign_format, lfs_pointer

    if lfs_pointer(path):
        raise UnsupportedFormatError(path, "a Git LFS pointer, not the file itself: fetch it "
                                     "with `git lfs pull` (in CI: check out with lfs: true)")
    kind = foreign_format(path)
    if kind is not None:  # a scan lists it as skipped, with what it is
        raise SkippedFileError(path, f"{kind}: not a format ckptdoc reads")


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


def find_checkpoints(root: Path, respect_gitignore: bool = True) -> list[Path]:
    """Every checkpoint under `root`, each once: bundle prefixes (not shards), SavedModel
    directories, Keras .h5/.hdf5/.keras files, and HDF5 / Keras zip files recognised by their
    first bytes whatever their name; other frameworks' model files too (reported as skipped).
    Symlinked folders are not followed; what `.gitignore` / `.ignore` exclude is not visited
    unless `respect_gitignore` is False."""
    from ckptdoc.formats.foreign import FOREIGN_SUFFIXES, foreign_format
    from ckptdoc.formats.ignore import Ignores

    root = Path(root)
    if not root.is_dir():
        return [root]
    found: set[Path] = set()
    ignores: dict[Path, Ignores] = {root: Ignores.above(root)} if respect_gitignore else {}
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        here = ignores.pop(d, None)
        here = here.entering(d) if here is not None else None
        # Not the user's models: version control, environments, caches, installed packages
        # (h5py's own test files in a .venv used to fail the gate), and what the repository
        # ignores. A folder given explicitly is still searched: only what the walk finds
        # below it is skipped.
        dirnames[:] = [n for n in dirnames if not skipped_folder(d / n)
                       and not (here is not None and here.ignored(d / n, is_dir=True))]
        if here is not None:
            ignores.update(dict.fromkeys((d / n for n in dirnames), here))
            filenames = [f for f in filenames if not here.ignored(d / f, is_dir=False)]
        if is_savedmodel_dir(d):
            found.add(d)
            # The variables bundle belongs to the SavedModel: do not list it again.
            if "variables" in dirnames:
                dirnames.remove("variables")
        for f in filenames:
            lower = f.lower()
            if f == ".index":
                found.add(d / f)
            elif f.endswith(".index"):
                found.add(d / f[: -len(".index")])
            elif lower.endswith((".h5", ".hdf5", ".keras")):
                found.add(d / f)
            elif (lower.endswith(_TORCH_SUFFIXES) and _is_torch_zip(d / f)) \
                    or lower.endswith(".safetensors"):
                found.add(d / f)
            elif lower.endswith(FOREIGN_SUFFIXES) and foreign_format(d / f) is not None:
                found.add(d / f)  # listed, then reported as skipped with what it is
            elif not DATA_SHARD_RE.match(f) and not f.endswith(".meta") and _is_keras_file(d / f):
                found.add(d / f)  # named without an extension: known by its first bytes
        dirnames.sort()
    return sorted(found)


#: Folders a recursive search never enters, as ruff skips them.
SKIPPED_FOLDERS = frozenset({
    ".git", ".hg", ".svn", ".bzr", "_darcs", ".jj", "node_modules", "__pycache__",
    "site-packages", "dist-packages", ".tox", ".nox", ".venv", ".mypy_cache",
    ".pytest_cache", ".ruff_cache", ".ipynb_checkpoints", "__pypackages__",
})


def skipped_folder(path: Path) -> bool:
    """A folder a recursive search skips: a known tool folder, or any virtual environment
    (it holds a `pyvenv.cfg`), whatever its name."""
    return path.name in SKIPPED_FOLDERS or (path / "pyvenv.cfg").is_file()


def _is_keras_file(path: Path) -> bool:
    """An HDF5 file, or a zip holding a Keras model (a `.npz` is a zip of `.npy` files)."""
    if path.is_symlink() or not path.is_file():
        return False
    magic = _sniff(path)
    if magic == HDF5_MAGIC:
        return True
    if magic[:4] != ZIP_MAGIC:
        return False
    import zipfile

    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return "config.json" in names and "model.weights.h5" in names
