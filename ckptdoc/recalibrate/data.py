"""Data sources for recalibration: files, folders, image folders, or user code.

Every source is a re-iterable factory of `Batch`es (sequential mode walks the data more than
once). Nothing here materializes a whole dataset: `.npy` files are memory-mapped, uncompressed
`.npz` members are memory-mapped in place, and only compressed `.npz` members are read whole
(NumPy cannot seek inside a deflate stream). TensorFlow / Keras are imported lazily, only for
image folders and `tf.data` datasets.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.recalibrate.errors import RecalibrationError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif"}


@dataclass(frozen=True)
class Batch:
    """Model inputs (an array, a tensor, or a dict / list of them) and optional labels."""

    x: Any
    y: Any = None

    @property
    def size(self) -> int:
        return batch_size_of(self.x)


def batch_size_of(x: Any) -> int:
    if isinstance(x, Mapping):
        x = next(iter(x.values()))
    elif isinstance(x, list | tuple):
        x = x[0]
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) == 0:
        raise RecalibrationError("a batch has no batch dimension (got a scalar)")
    return int(shape[0])


def _slice(x: Any, n: int) -> Any:
    if x is None:
        return None
    if isinstance(x, Mapping):
        return {k: v[:n] for k, v in x.items()}
    if isinstance(x, list | tuple):
        return type(x)(v[:n] for v in x)
    return x[:n]


def _to_model_dtype(a: np.ndarray) -> np.ndarray:
    # Keras' default float is float32; float64 inputs would only force casts inside the model.
    a = np.asarray(a)
    return a.astype(np.float32) if a.dtype == np.float64 else a


@dataclass
class DataSource:
    """A named, re-iterable stream of batches.

    `size` (samples, when known) and `spread(batch_size, n)` (batches of `n` samples taken
    across the whole data) let a sample budget smaller than the data cover all of it: data
    sorted by class (every image folder, many `.npz` files) would otherwise give statistics
    of its first classes only."""

    description: str
    factory: Callable[[int], Iterable[Batch]]
    notes: list[str] = field(default_factory=list)
    size: int | None = None
    spread: Callable[[int, int], Iterable[Batch]] | None = None

    def batches(self, batch_size: int) -> Iterator[Batch]:
        for b in self.factory(batch_size):
            yield b if isinstance(b, Batch) else to_batch(b)

    def _spreads(self, budget: Budget) -> bool:
        """Whether `budget` is taken from across the data: a sample budget smaller than data
        that can be sampled."""
        n = budget.samples
        return (n is not None and budget.batches is None and self.spread is not None
                and self.size is not None and self.size > n)

    def budgeted(self, batch_size: int, budget: Budget, consumed: Consumed) -> Iterator[Batch]:
        """Batches within `budget`: across the whole data when it is larger than the sample
        budget and can be sampled, else its first samples."""
        if self._spreads(budget) and self.spread is not None and budget.samples is not None:
            return limited(self.spread(batch_size, budget.samples), budget, consumed)
        return limited(self.batches(batch_size), budget, consumed)

    def budget_note(self, budget: Budget) -> str | None:
        """Says how a sample budget smaller than the data was spent."""
        if not self._spreads(budget):
            return None
        return f"{budget.samples} of the data's {self.size} samples, evenly spread across all of it"


@dataclass
class Budget:
    """Stop after `samples` samples or `batches` batches, whichever is set (`Options` holds
    the default budget)."""

    samples: int | None = None
    batches: int | None = None


@dataclass
class Consumed:
    samples: int = 0
    batches: int = 0
    exhausted: bool = False  # the data ran out before the budget was reached


def limited(batches: Iterable[Batch], budget: Budget, consumed: Consumed) -> Iterator[Batch]:
    """Yield batches until the budget is met; the last batch is cut to hit `samples` exactly."""
    consumed.samples = consumed.batches = 0
    consumed.exhausted = False
    for b in batches:
        if budget.batches is not None and consumed.batches >= budget.batches:
            return
        n = b.size
        if n == 0:
            continue
        if budget.samples is not None:
            left = budget.samples - consumed.samples
            if left <= 0:
                return
            if n > left:
                b, n = Batch(_slice(b.x, left), _slice(b.y, left)), left
        consumed.samples += n
        consumed.batches += 1
        yield b
        if budget.samples is not None and consumed.samples >= budget.samples:
            return
        if budget.batches is not None and consumed.batches >= budget.batches:
            return
    consumed.exhausted = True


def to_batch(item: Any) -> Batch:
    """Interpret one element a user iterable yields: array, (x,), (x, y), (x, y, w) or dict."""
    if isinstance(item, Batch):
        return item
    if isinstance(item, tuple | list) and not _is_array(item):
        if len(item) == 1:
            return Batch(_norm_x(item[0]))
        if len(item) in (2, 3):  # (x, y) or (x, y, sample_weight) as Keras fit() accepts
            return Batch(_norm_x(item[0]), _norm_y(item[1]))
        raise RecalibrationError(
            f"a batch is a {type(item).__name__} of {len(item)} items; expected x, (x,) or (x, y)"
        )
    if isinstance(item, Mapping) or _is_array(item):
        return Batch(_norm_x(item))
    raise RecalibrationError(
        f"a batch is a {type(item).__name__}; expected an array, an (x, y) tuple or a dict"
    )


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype")


def _norm_x(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _norm_x(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return _to_model_dtype(x)
    if isinstance(x, list | tuple) and x and all(_is_array(v) for v in x):
        return [_norm_x(v) for v in x]
    if _is_array(x):
        return x  # a tensor: leave it on its device
    return _to_model_dtype(np.asarray(x))


def _norm_y(y: Any) -> Any:
    if y is None:
        return None
    if hasattr(y, "numpy"):
        y = y.numpy()
    return np.asarray(y)


# -- .npy / .npz ------------------------------------------------------------------------------


def _npz_member(path: Path, key: str) -> np.ndarray:
    """An `.npz` member, memory-mapped when it is stored uncompressed, else read whole."""
    name = key + ".npy"
    try:
        with zipfile.ZipFile(path) as zf:
            names = zf.namelist()
            if name not in names:
                keys = ", ".join(n[:-4] for n in names if n.endswith(".npy"))
                raise RecalibrationError(f"{path}: no array {key!r} (it holds: {keys})")
            info = zf.getinfo(name)
        if info.compress_type == zipfile.ZIP_STORED:
            with open(path, "rb") as f:
                f.seek(info.header_offset)
                local = f.read(30)
                if local[:4] != b"PK\x03\x04":
                    raise ValueError("bad local header")
                n_name = int.from_bytes(local[26:28], "little")
                n_extra = int.from_bytes(local[28:30], "little")
                start = info.header_offset + 30 + n_name + n_extra
                f.seek(start)
                version = np.lib.format.read_magic(f)
                header = {
                    (1, 0): np.lib.format.read_array_header_1_0,
                    (2, 0): np.lib.format.read_array_header_2_0,
                }.get(version)
                parsed = header(f) if header else None
                data_start = f.tell()
            if parsed is not None and not parsed[1] and not parsed[2].hasobject:
                shape, _, dtype = parsed
                if int(np.prod(shape)) == 0:
                    return np.zeros(shape, dtype)
                return np.memmap(path, dtype=dtype, mode="r", offset=data_start, shape=shape)
        with np.load(path, allow_pickle=False) as z:
            return z[key]
    except RecalibrationError:
        raise
    except (OSError, ValueError, zipfile.BadZipFile, KeyError) as exc:
        raise RecalibrationError(f"{path}: cannot read as .npz: {exc}") from exc


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise RecalibrationError(f"{path}: cannot read as .npy: {exc}") from exc


def _npz_keys(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise RecalibrationError(f"{path}: cannot read as .npz: {exc}") from exc


# Inputs are one array, or a dict of arrays (a multi-input model: `--x-key a,b`), all of the
# same length.
Inputs = np.ndarray | dict[str, np.ndarray]


def _length(x: Inputs) -> int:
    return len(next(iter(x.values()))) if isinstance(x, dict) else len(x)


def _take(x: Inputs, index: Any) -> Any:
    """Rows `index` (a slice or an index array) of the inputs, as the model wants them."""
    if isinstance(x, dict):
        return {k: _to_model_dtype(np.ascontiguousarray(v[index])) for k, v in x.items()}
    return _to_model_dtype(np.ascontiguousarray(x[index]))


def _array_chunks(
    chunks: list[tuple[Inputs, np.ndarray | None]],
) -> Callable[[int], Iterator[Batch]]:
    def factory(batch_size: int) -> Iterator[Batch]:
        for x, y in chunks:
            for i in range(0, _length(x), batch_size):
                rows = slice(i, i + batch_size)
                yield Batch(_take(x, rows), None if y is None else np.asarray(y[rows]))

    return factory


def _array_spread(
    chunks: list[tuple[Inputs, np.ndarray | None]],
) -> Callable[[int, int], Iterator[Batch]]:
    """`n` samples at evenly spaced positions over all chunks, in order, in batches (each
    batch from one chunk, so chunks of different inputs never mix)."""

    def spread(batch_size: int, n: int) -> Iterator[Batch]:
        total = sum(_length(x) for x, _ in chunks)
        picks = np.unique(np.linspace(0, total - 1, n).round().astype(np.int64))
        starts = np.cumsum([0] + [_length(x) for x, _ in chunks])
        for c, (x, y) in enumerate(chunks):
            local = picks[(picks >= starts[c]) & (picks < starts[c + 1])] - starts[c]
            for i in range(0, len(local), batch_size):
                rows = local[i : i + batch_size]
                yield Batch(_take(x, rows), None if y is None else np.asarray(y[rows]))

    return spread


def _arrays_source(description: str, chunks: list[tuple[Inputs, np.ndarray | None]]) -> DataSource:
    return DataSource(description, _array_chunks(chunks),
                      size=sum(_length(x) for x, _ in chunks), spread=_array_spread(chunks))


def _load_npz_pair(path: Path, x_key: str, y_key: str) -> tuple[Inputs, np.ndarray | None]:
    """The inputs under `x_key` (`a,b`: several, as a dict for a multi-input model, keyed
    by the names its inputs have) and the labels under `y_key`, if any."""
    keys = _npz_keys(path)
    wanted = [k.strip() for k in x_key.split(",") if k.strip()]
    missing = [k for k in wanted if k not in keys]
    if missing or not wanted:
        raise RecalibrationError(
            f"{path}: no inputs under {', '.join(map(repr, missing or [x_key]))} (it holds: "
            f"{', '.join(keys) or 'nothing'}); use --x-key (several: --x-key a,b)"
        )
    y = _npz_member(path, y_key) if y_key in keys else None
    if len(wanted) == 1:
        x = _npz_member(path, wanted[0])
        _check_pair(path, x, y)
        return x, y
    inputs = {k: _npz_member(path, k) for k in wanted}
    for a in inputs.values():
        _check_pair(path, a, y)
    if len({len(a) for a in inputs.values()}) != 1:
        raise RecalibrationError(f"{path}: the inputs {', '.join(wanted)} differ in length")
    return inputs, y


def _check_pair(path: Path, x: np.ndarray, y: np.ndarray | None) -> None:
    if x.ndim == 0:
        raise RecalibrationError(f"{path}: inputs are a scalar, expected a batch dimension")
    if y is not None and len(y) != len(x):
        raise RecalibrationError(f"{path}: {len(x)} inputs but {len(y)} labels")


def from_arrays(
    x: np.ndarray, y: np.ndarray | None = None, description: str = "arrays"
) -> DataSource:
    return _arrays_source(description, [(x, y)])


@dataclass(frozen=True)
class ImageOptions:
    """How an image folder becomes batches."""

    size: tuple[int, int] = (256, 256)
    #: Multiply pixels (0-255 as read) by this, e.g. 1/255 for a model that expects [0, 1].
    #: None: fed as read, and the report says so.
    scale: float | None = None
    #: Use sub-folder names as class labels (alphabetical order = class index). Off by
    #: default: that order need not match the model's classes, which would make the
    #: before/after check compare against wrong labels.
    folder_labels: bool = False


def from_path(
    spec: str, *, x_key: str = "x", y_key: str = "y", images: ImageOptions | None = None
) -> DataSource:
    """Resolve a `--data` value: file, folder, or `module:function`."""
    path = Path(spec)
    if path.is_file():
        if path.suffix == ".npz":
            return _arrays_source(str(path), [_load_npz_pair(path, x_key, y_key)])
        if path.suffix == ".npy":
            x = _npy(path)
            _check_pair(path, x, None)
            return _arrays_source(str(path), [(x, None)])
        raise RecalibrationError(f"{path}: --data must be .npz, .npy, a folder or module:function")
    if path.is_dir():
        return _from_folder(path, x_key=x_key, y_key=y_key, images=images or ImageOptions())
    if ":" in spec:
        return from_callable_spec(spec)
    raise RecalibrationError(f"--data {spec}: no such file or folder, and not module:function")


def _from_folder(path: Path, *, x_key: str, y_key: str, images: ImageOptions) -> DataSource:
    files = sorted(p for p in path.iterdir() if p.is_file())
    npz = [p for p in files if p.suffix == ".npz"]
    npy = [p for p in files if p.suffix == ".npy"]
    if npz:
        return _arrays_source(
            f"{path} ({len(npz)} .npz files)",
            [_load_npz_pair(p, x_key, y_key) for p in npz],
        )
    if npy:
        by_stem = {p.stem: p for p in npy}
        if x_key in by_stem:  # x.npy (+ y.npy): inputs and labels side by side
            x = _npy(by_stem[x_key])
            y = _npy(by_stem[y_key]) if y_key in by_stem else None
            _check_pair(path, x, y)
            return _arrays_source(f"{path} ({x_key}.npy)", [(x, y)])
        chunks: list[tuple[Inputs, np.ndarray | None]] = []
        for p in npy:
            a = _npy(p)
            _check_pair(p, a, None)
            chunks.append((a, None))
        return _arrays_source(f"{path} ({len(npy)} .npy files)", chunks)
    if _has_images(path):
        return _image_folder(path, images)
    raise RecalibrationError(f"--data {path}: the folder holds no .npz, .npy or image files")


def _has_images(path: Path) -> bool:
    for p in path.rglob("*"):
        if p.suffix.lower() in IMAGE_EXTS:
            return True
    return False


def _image_folder(path: Path, options: ImageOptions) -> DataSource:
    image_size = options.size
    in_folders = any(
        d.is_dir() and any(f.suffix.lower() in IMAGE_EXTS for f in d.iterdir())
        for d in path.iterdir()
    )
    labelled = in_folders and options.folder_labels

    def images(batch_size: int, shuffle: bool) -> Iterator[Batch]:
        import keras

        ds = keras.utils.image_dataset_from_directory(
            str(path),
            labels="inferred" if in_folders else None,
            label_mode="int" if in_folders else None,
            image_size=image_size,
            batch_size=batch_size,
            shuffle=shuffle,
            seed=1337 if shuffle else None,
            verbose=False,
        )
        for item in ds:
            x = item[0] if labelled or in_folders else item
            if options.scale is not None:
                x = x * options.scale
            yield Batch(x, item[1].numpy()) if labelled else Batch(x)

    def factory(batch_size: int) -> Iterator[Batch]:
        return images(batch_size, shuffle=False)

    def spread(batch_size: int, n: int) -> Iterator[Batch]:
        # Sub-folders are classes, listed in order: a fixed-seed shuffle takes the budget
        # from all of them, reproducibly.
        return images(batch_size, shuffle=True)

    note = ("labels from sub-folder names" if labelled else
            "sub-folder names not used as labels" if in_folders else "no labels (flat folder)")
    notes = []
    if in_folders and not labelled:
        notes.append(f"{path}: sub-folder names are not taken as class labels (their "
                     "alphabetical order need not match the model's classes); pass "
                     "--folder-labels if it does")
    if options.scale is None:
        notes.append(f"{path}: pixels are fed as read (0-255): if the model expects other "
                     "preprocessing and does not do it itself, pass --pixel-scale (e.g. "
                     "0.00392156862745098 for [0, 1]) or give data through module:function")
    count = sum(1 for p in path.rglob("*") if p.suffix.lower() in IMAGE_EXTS)
    return DataSource(f"{path} (images, {image_size[0]}x{image_size[1]}, {note})", factory,
                      notes=notes, size=count, spread=spread)


# -- module:function ---------------------------------------------------------------------------


def load_callable(spec: str, what: str) -> Callable[..., Any]:
    """Import `module:function` or `path/to/file.py:function`; user errors -> RecalibrationError."""
    mod_name, sep, func_name = spec.rpartition(":")
    if not sep or not mod_name or not func_name:
        raise RecalibrationError(f"{what} {spec!r}: expected module:function or file.py:function")
    try:
        if mod_name.endswith(".py"):
            file = Path(mod_name)
            if not file.is_file():
                raise RecalibrationError(f"{what} {spec!r}: no such file {file}")
            unique = f"_ckptdoc_user_{abs(hash(str(file.resolve())))}"
            module_spec = importlib.util.spec_from_file_location(unique, file)
            if module_spec is None or module_spec.loader is None:
                raise RecalibrationError(f"{what} {spec!r}: cannot import {file}")
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[unique] = module
            module_spec.loader.exec_module(module)
        else:
            if "" not in sys.path and "." not in sys.path:
                sys.path.insert(0, "")  # like `python -m`: the current folder is importable
            module = importlib.import_module(mod_name)
    except RecalibrationError:
        raise
    except Exception as exc:  # user code: any failure is theirs to fix, show it plainly
        raise RecalibrationError(
            f"{what} {spec!r}: importing {mod_name} failed: {type(exc).__name__}: {exc}"
        ) from exc
    fn = getattr(module, func_name, None)
    if not callable(fn):
        raise RecalibrationError(f"{what} {spec!r}: {mod_name} has no function {func_name!r}")
    return fn  # type: ignore[no-any-return]


def from_callable_spec(spec: str) -> DataSource:
    return from_iterable_factory(load_callable(spec, "--data"), spec)


def from_iterable_factory(fn: Callable[[], Any], description: str) -> DataSource:
    def factory(batch_size: int) -> Iterator[Batch]:
        try:
            it = fn()
        except Exception as exc:
            raise RecalibrationError(
                f"--data {description}: the function raised {type(exc).__name__}: {exc}"
            ) from exc
        yield from iterate_any(it, batch_size)

    return DataSource(description, factory)


def iterate_any(it: Any, batch_size: int) -> Iterator[Batch]:
    """Batches from a user object: a tf.data.Dataset, a Keras PyDataset, or any iterable."""
    if _is_tf_dataset(it):
        # Its own prefetch: tf.data prepares the next batches in its threads while the step
        # runs, as `model.predict` consumes a dataset (a second prefetch is only a buffer).
        prefetch = getattr(it, "prefetch", None)
        for item in prefetch(-1) if prefetch is not None else it:  # -1: tf.data.AUTOTUNE
            yield to_batch(item)
        return
    if _is_array(it) and not hasattr(it, "__next__"):
        # A bare array: one dataset, batched here.
        arr = np.asarray(it)
        yield from _array_chunks([(arr, None)])(batch_size)
        return
    if isinstance(it, Mapping):
        raise RecalibrationError("--data function returned a dict; return an iterable of batches")
    try:
        iterator = iter(it)
    except TypeError as exc:
        raise RecalibrationError(
            f"--data function returned a {type(it).__name__}, which is not iterable"
        ) from exc
    for item in iterator:
        yield to_batch(item)


def _is_tf_dataset(obj: Any) -> bool:
    mod = type(obj).__module__ or ""
    return mod.startswith("tensorflow") and hasattr(obj, "element_spec")


def from_object(
    data: Any, *, batch_size: int, x_key: str = "x", y_key: str = "y",
    images: ImageOptions | None = None,
) -> DataSource:
    """Anything the Python API accepts as `data`."""
    if isinstance(data, DataSource):
        return data
    if isinstance(data, str | Path):
        return from_path(str(data), x_key=x_key, y_key=y_key, images=images)
    if isinstance(data, np.ndarray):
        return from_arrays(data)
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(a, np.ndarray) for a in data):
        return from_arrays(data[0], data[1])
    if callable(data) and not _is_tf_dataset(data):
        return from_iterable_factory(data, getattr(data, "__name__", "callable"))
    if _is_tf_dataset(data) or isinstance(data, list | tuple):
        return DataSource(type(data).__name__, lambda bs: iterate_any(data, bs))
    if hasattr(data, "__iter__") and not hasattr(data, "__next__"):
        return DataSource(type(data).__name__, lambda bs: iterate_any(data, bs))
    if hasattr(data, "__next__"):
        # A one-shot iterator (a generator) can be read once: what is read is kept, so a peek
        # at the first batch, a second pass (sequential mode) or the held-out check replay it
        # instead of losing it.
        replay = _Replay(data)
        return DataSource(
            type(data).__name__,
            lambda bs: iterate_any(replay, bs),
            notes=["a one-shot iterator: the batches read are kept in memory to be read again"],
        )
    raise RecalibrationError(f"cannot use a {type(data).__name__} as data")


class _Replay:
    """An iterable over a one-shot iterator that every new iteration reads from the start."""

    def __init__(self, it: Iterator[Any]) -> None:
        self._it = it
        self._seen: list[Any] = []

    def __iter__(self) -> Iterator[Any]:
        yield from list(self._seen)
        for item in self._it:
            self._seen.append(item)
            yield item


def _npz_files(spec: str) -> list[Path]:
    p = Path(spec)
    if p.is_file() and p.suffix == ".npz":
        return [p]
    if p.is_dir():
        return sorted(f for f in p.iterdir() if f.is_file() and f.suffix == ".npz")
    return []


def from_feeds(
    spec: Any, keys: set[str], *, batch_size: int, x_key: str = "x", y_key: str = "y",
    images: ImageOptions | None = None,
) -> DataSource:
    """Data for several named inputs (a TF1 graph's placeholders): dict batches
    `{key: array}` read from the `.npz` arrays of those names. One key (or data that is not
    `.npz`) is `from_object` on that key."""
    files = _npz_files(str(spec)) if isinstance(spec, str | Path) else []
    if len(keys) <= 1 or not files:
        key = next(iter(keys)) if keys else x_key
        return from_object(spec, batch_size=batch_size, x_key=key, y_key=y_key, images=images)
    for f in files:
        missing = keys - set(_npz_keys(f))
        if missing:
            raise RecalibrationError(f"{f}: no array {', '.join(sorted(missing))} for --feed")

    def factory(bs: int) -> Iterator[Batch]:
        for f in files:
            arrays = {k: _npz_member(f, k) for k in keys}
            y = _npz_member(f, y_key) if y_key in _npz_keys(f) else None
            n = len(next(iter(arrays.values())))
            for i in range(0, n, bs):
                x = {k: np.ascontiguousarray(a[i : i + bs]) for k, a in arrays.items()}
                yield Batch(x, None if y is None else np.asarray(y[i : i + bs]))

    return DataSource(f"{spec} ({', '.join(sorted(keys))})", factory)
