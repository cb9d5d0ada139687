"""No data lost: recalibrate's write path under SIGKILL, Ctrl-C and a full disk.

The write under test is the pipeline's own write step, `pipeline.commit`, with the audit check
`ckptdoc recalibrate` uses, on the `Fix` each target hands it: `KerasFileFix` (copy the input,
patch the BN datasets with h5py, rebuild the zip for `.keras`; `atomic.atomic_path` or
`atomic.in_place`) and `BundleFix` (TF1 and TF2 checkpoints: a staged bundle renamed into a
new prefix, `.index` last). No TensorFlow is needed: the new values are made from the file
itself (new mean = old + 1, new variance = old * 2).

Faults are injected at *points*: every call of the functions a write goes through (each
16 KiB chunk copied, every h5py file opened or closed, every dataset written, os.open / fsync /
replace) is numbered, and each test runs the write once per point, faulting at that point:
SIGKILL (in a forked child), KeyboardInterrupt, or OSError(ENOSPC). Random-time SIGKILL and
real SIGINT cover what happens between points (inside libhdf5). After every run: the input is
byte-identical (or, for --in-place, either the original or the complete new file with the
original in `.bak`), and the output is absent or complete and valid.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import random
import shutil
import signal
import time
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from ckptdoc import atomic
from ckptdoc.formats import open_checkpoint
from ckptdoc.groups import find_groups
from ckptdoc.recalibrate import pipeline, writer
from ckptdoc.recalibrate.bundle_writer import BundleFix
from ckptdoc.recalibrate.targets import Fix

# A fault injected into ZipFile.close also fires when the garbage collector closes the
# half-written archive; Python reports that as "exception ignored", which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")

ROOT = Path(__file__).resolve().parent.parent
MODELS = {
    "legacy-h5-full": ROOT / "sample_ckpts" / "keras2_healthy.h5",
    "keras-zip": ROOT / "tests" / "data" / "keras" / "k3_seq.keras",
    "tf1-bundle": ROOT / "sample_ckpts" / "tf1_healthy" / "model.ckpt",
    "tf2-bundle": ROOT / "sample_ckpts" / "tf2_healthy" / "ckpt-1",
}
BUNDLES = ("tf1-bundle", "tf2-bundle")
CHUNK = 16 << 10


# --------------------------------------------------------------------------- the write


def _values(path: Path) -> dict[str, np.ndarray]:
    with open_checkpoint(path) as ckpt:
        return {k: ckpt.read(k) for k in ckpt.tensors}


def _plan(src: Path) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """New values for every BN statistic, and every tensor's expected value after the write."""
    expected = _values(src)
    new: dict[str, np.ndarray] = {}
    with open_checkpoint(src) as ckpt:
        groups = find_groups(ckpt)
    changes: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "moving_mean": lambda v: v + 1,
        "moving_variance": lambda v: v * 2,
    }
    for group in groups:
        for role, change in changes.items():
            key = group.members.get(role)
            if key:
                new[key] = change(expected[key]).astype(expected[key].dtype)
    assert len(new) >= 4
    old = dict(expected)
    expected.update(new)
    return {k: old[k] for k in new}, expected


def _write(case: Case, in_place: bool) -> None:
    """The write step of `ckptdoc recalibrate`, on this case's fix."""
    pipeline.commit(case.fix, case.dest, in_place, pipeline.AuditCheck(force=False))


Refused = pipeline.Refused


# --------------------------------------------------------------------------- fault points


class Faults:
    """Numbers every call of the write's I/O functions; runs `action` at call number `at`."""

    def __init__(self, at: int, action: Callable[[str], None]) -> None:
        self.at, self.action, self.count, self.hit = at, action, 0, ""

    def point(self, name: str) -> None:
        self.count += 1
        if self.count == self.at:
            self.hit = name
            self.action(name)


def _chunked_copyfileobj(faults: Faults, delay: float) -> Callable[..., None]:
    def copy(fsrc, fdst, length: int = 0) -> None:  # type: ignore[no-untyped-def]
        while chunk := fsrc.read(CHUNK):
            faults.point("write chunk")
            fdst.write(chunk)
            if delay:
                time.sleep(delay)

    return copy


@contextlib.contextmanager
def installed(faults: Faults, delay: float = 0.0) -> Iterator[None]:
    """Route the write's I/O through `faults` (undone on exit; children just exit)."""
    patches: list[tuple[object, str, object]] = []

    def wrap(owner: object, name: str) -> None:
        original = getattr(owner, name)

        def hooked(*args, **kwargs):  # type: ignore[no-untyped-def]
            faults.point(f"{getattr(owner, '__name__', owner)}.{name}")
            return original(*args, **kwargs)

        patches.append((owner, name, original))
        setattr(owner, name, hooked)

    patches.append((shutil, "_USE_CP_SENDFILE", shutil._USE_CP_SENDFILE))  # type: ignore[attr-defined]
    shutil._USE_CP_SENDFILE = False  # type: ignore[attr-defined]  # copyfile -> copyfileobj
    patches.append((shutil, "copyfileobj", shutil.copyfileobj))
    shutil.copyfileobj = _chunked_copyfileobj(faults, delay)
    for owner, name in [
        (os, "open"), (os, "fsync"), (os, "replace"), (os, "unlink"),
        (h5py.File, "__init__"), (h5py.File, "close"), (h5py.Dataset, "__setitem__"),
        (zipfile.ZipFile, "open"), (zipfile.ZipFile, "close"),
    ]:  # fmt: skip
        wrap(owner, name)
    try:
        yield
    finally:
        for owner, name, original in reversed(patches):
            setattr(owner, name, original)


# --------------------------------------------------------------------------- checking


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Case:
    """One model copied into a fresh folder, with what a correct write must produce.

    A bundle case copies the checkpoint's folder; its output is a new prefix in a sibling
    folder (bundles have no in-place write)."""

    def __init__(self, root: Path, kind: str) -> None:
        self.kind = kind
        self.bundle = kind in BUNDLES
        self.dir = root / kind
        self.dir.mkdir(parents=True, exist_ok=True)
        model = MODELS[kind]
        self.original = (
            {p.name: p.read_bytes() for p in model.parent.iterdir()}
            if self.bundle else {model.name: model.read_bytes()}
        )
        self.src = self.dir / model.name
        if self.bundle:
            self.out_dir = root / f"{kind}.recalibrated"
            self.dest = self.out_dir / model.name
        else:
            stem, dot, ext = model.name.partition(".")
            self.out_dir = self.dir
            self.dest = self.dir / f"{stem}.recalibrated{dot}{ext}"
        self.reset()
        old, self.expected = _plan(self.src)
        new = {k: self.expected[k] for k in old}
        self.fix: Fix = (
            BundleFix(self.src, new) if self.bundle
            else writer.KerasFileFix(self.src, kind, [
                writer.Patch(k, v, old[k]) for k, v in new.items()
            ])
        )

    def reset(self) -> None:
        for d in {self.dir, self.out_dir}:
            if d.exists():
                shutil.rmtree(d)
        self.dir.mkdir()
        for name, data in self.original.items():
            (self.dir / name).write_bytes(data)

    def _input_intact(self, where: str) -> None:
        now = {p.name: p.read_bytes() for p in self.dir.iterdir() if p.is_file()
               and not p.name.startswith(".ckptdoc-tmp-") and p.name in self.original}
        assert now == self.original, f"{where}: input changed"

    def _valid_new(self, path: Path) -> None:
        got = _values(path)
        assert set(got) == set(self.expected)
        for key, want in self.expected.items():
            assert np.array_equal(got[key], want), f"{path}: {key} is wrong"

    def _landed(self) -> bool:
        # A bundle exists for readers once its .index is in place (it is renamed last).
        return Path(str(self.dest) + ".index").exists() if self.bundle else self.dest.exists()

    def check(self, in_place: bool, where: str) -> str:
        """Assert the no-data-loss contract; return "old" or "new" (what the user now has)."""
        if not in_place:
            self._input_intact(where)
            assert not atomic.backup_path(self.src).exists()
            if not self._landed():
                return "old"
            self._valid_new(self.dest)
            return "new"
        leftovers = sorted(p.name for p in self.dir.iterdir() if p.name.startswith(".ckptdoc-tmp-"))
        bak = atomic.backup_path(self.src)
        original = self.original[self.src.name]
        if bak.exists():
            assert bak.read_bytes() == original, f"{where}: backup is not the original"
        if self.src.read_bytes() == original:
            return "old"
        assert bak.exists(), f"{where}: input replaced without a backup ({leftovers})"
        self._valid_new(self.src)
        return "new"

    def no_leftovers(self) -> None:
        for d in {self.dir, self.out_dir}:
            if d.exists():
                assert not [p.name for p in d.iterdir() if p.name.startswith(".ckptdoc-tmp-")]


# Every target's fix, to a new output and (files only: bundles get a new prefix) in place.
WRITES = [
    pytest.param(kind, in_place, id=f"{kind}-{'in-place' if in_place else 'output'}")
    for kind in sorted(MODELS)
    for in_place in (False, True)
    if not (in_place and kind in BUNDLES)
]


def _count_points(case: Case, in_place: bool) -> int:
    faults = Faults(0, lambda _n: None)
    with installed(faults):
        _write(case, in_place)
    assert case.check(in_place, "clean run") == "new"
    case.no_leftovers()
    case.reset()
    assert faults.count > 10
    return faults.count


def _reap(pid: int, timeout: float = 60.0) -> tuple[int, bool]:
    """Wait for child `pid`; (wait status, whether it had to be killed).

    The children are forked from the pytest process, which other tests have filled with
    TensorFlow's threads; a child forked while one of them held a lock (malloc's, say) can
    block forever on it, which says nothing about ckptdoc (the CLI never forks). Such a child
    is killed after `timeout`: for the contract under test that is one more kill at a random
    point, and the checks after it still apply."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status, False
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1], True


def _in_child(body: Callable[[], None]) -> int:
    """Run `body` in a forked child; return its wait status (killed children are expected)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 1
        try:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            body()
            code = 0
        except KeyboardInterrupt:
            code = 3
        except BaseException:  # noqa: BLE001
            code = 4
        finally:
            os._exit(code)
    return _reap(pid)[0]


# --------------------------------------------------------------------------- the tests


@pytest.mark.parametrize(("kind", "in_place"), WRITES)
def test_sigkill_at_every_point(tmp_path: Path, kind: str, in_place: bool) -> None:
    case = Case(tmp_path, kind)
    total = _count_points(case, in_place)
    seen = {"old": 0, "new": 0}
    for at in range(1, total + 1):

        def body(at: int = at) -> None:
            with installed(Faults(at, lambda _n: os.kill(os.getpid(), signal.SIGKILL))):
                _write(case, in_place)

        status = _in_child(body)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, (at, status)
        seen[case.check(in_place, f"SIGKILL at point {at}/{total}")] += 1
        case.reset()
    # Killed before the rename: the old file; after it: the new one. Both happened.
    assert seen["old"] and seen["new"], seen


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(lambda _n: (_ for _ in ()).throw(KeyboardInterrupt()), id="ctrl-c"),
        pytest.param(
            lambda n: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device", n)),
            id="disk-full",
        ),
    ],
)
@pytest.mark.parametrize(("kind", "in_place"), WRITES)
def test_interrupt_and_full_disk_at_every_point(
    tmp_path: Path, kind: str, in_place: bool, fault: Callable[[str], None]
) -> None:
    case = Case(tmp_path, kind)
    total = _count_points(case, in_place)
    for at in range(1, total + 1):
        faults = Faults(at, fault)
        with installed(faults), contextlib.suppress(KeyboardInterrupt, OSError, Refused):
            _write(case, in_place)
        where = f"fault at point {at}/{total} ({faults.hit})"
        outcome = case.check(in_place, where)
        if faults.hit in ("posix.unlink", "os.unlink"):
            # The fault hit the clean-up itself (after an earlier error or after the rename).
            pass
        elif outcome == "old":
            case.no_leftovers()  # the exception path removed its temporary files
        case.reset()


def test_in_place_failure_keeps_original_and_backup(tmp_path: Path) -> None:
    case = Case(tmp_path, "legacy-h5-full")
    original = case.original[case.src.name]

    def failing_check(tmp: Path) -> None:
        raise Refused("the audit of the new file failed")

    with pytest.raises(Refused):
        case.fix.write(case.dest, True, failing_check)
    assert case.src.read_bytes() == original
    assert atomic.backup_path(case.src).read_bytes() == original
    case.no_leftovers()
    # A failure noticed after the rename: the backup puts the original back.
    _write(case, True)
    assert case.check(True, "after in-place write") == "new"
    atomic.restore_backup(case.src)
    assert case.src.read_bytes() == original


@pytest.mark.parametrize("kind", BUNDLES)
def test_a_refused_bundle_leaves_no_output(tmp_path: Path, kind: str) -> None:
    case = Case(tmp_path, kind)

    def failing_check(staged: Path) -> None:
        assert Path(str(staged) + ".index").exists()  # the check sees the complete copy
        raise Refused("the audit of the new checkpoint failed")

    with pytest.raises(Refused):
        case.fix.write(case.dest, False, failing_check)
    assert case.check(False, "refused") == "old"
    assert not case.out_dir.exists()


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
@pytest.mark.parametrize(("kind", "in_place"), WRITES)
def test_signal_at_random_times(tmp_path: Path, kind: str, in_place: bool, sig: int) -> None:
    """Real signals at random moments of a slowed-down write (also inside libhdf5 calls)."""
    case = Case(tmp_path, kind)
    delay = 0.002

    def body() -> None:
        with installed(Faults(0, lambda _n: None), delay=delay):
            _write(case, in_place)

    for _attempt in range(2):  # a child blocked at fork (see _reap) is measured once more
        started = time.perf_counter()
        status = _in_child(body)
        duration = time.perf_counter() - started
        if not os.WIFSIGNALED(status):
            break
        case.reset()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    case.reset()
    rng = random.Random(f"{kind}{in_place}{sig}")
    for i in range(12):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 1
            try:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                body()
                code = 0
            except KeyboardInterrupt:
                code = 3
            finally:
                os._exit(code)
        time.sleep(rng.uniform(0, duration))
        os.kill(pid, sig)
        _reap(pid)
        case.check(in_place, f"{signal.Signals(sig).name} #{i}")
        case.reset()
