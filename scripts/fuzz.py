#!/usr/bin/env python
"""Long fuzz runs of ckptdoc's readers: `python scripts/fuzz.py --cases 100000 [--format all]`.

Each case mutates a committed checkpoint (tests/data, sample_ckpts; see tests/fuzzlib.py for the
mutations) and checks the contract: open + list + read every tensor + groups + audit either
succeed or raise CheckpointError, within --time-limit seconds, with the Python heap under a small
multiple of the input size. Cases run in worker processes, so a crash inside a C library (a
segfault in libhdf5) or a hang is caught too: the worker is replaced and the run goes on.

Every violation is saved under --crashes (default fuzz-crashes/): the mutated files plus
`case.json` (seed, mutations, outcome). Replay one with `--replay DIR`. Prints cases/second and
the number of violations as it goes; exit code 1 if any was found.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from tests import fuzzlib  # noqa: E402

STRUCT_WEIGHT = 0.45  # share of structural (format-aware) mutations


def make_case(seeds: list[fuzzlib.Seed], base_seed: int, i: int) -> tuple[fuzzlib.Seed, list]:
    rng = random.Random(f"{base_seed}:{i}")
    seed = seeds[rng.randrange(len(seeds))]
    ops = []
    for _ in range(1 + min(rng.randrange(4), rng.randrange(4))):  # mostly 1-2 mutations
        kind = fuzzlib.STRUCT if rng.random() < STRUCT_WEIGHT else fuzzlib.BYTE
        ops.append((kind, *(rng.getrandbits(rng.choice((4, 8, 16, 32))) for _ in range(5))))
    return seed, ops


def _save(crashes: Path, seed: fuzzlib.Seed, ops: list, outcome: dict[str, Any], case: Path | None,
          base_seed: int, i: int) -> Path:
    out = crashes / f"{outcome['status']}-{base_seed}-{i}"
    out.mkdir(parents=True, exist_ok=True)
    if case is None or not case.exists():  # the worker died: rebuild the input from the recipe
        case = out / "input"
        case.mkdir(exist_ok=True)
        fuzzlib.materialize(seed, ops, case)
    else:
        shutil.copytree(case, out / "input", dirs_exist_ok=True)
    (out / "case.json").write_text(json.dumps(
        {"seed": seed.name, "ops": ops, "entry": seed.entry, "case": i, "base_seed": base_seed,
         **outcome}, indent=1))
    return out


def worker(wid: int, nworkers: int, start: int, total: int, args: argparse.Namespace,
           queue: mp.Queue) -> None:
    if args.memory_cap_gb:
        cap = int(args.memory_cap_gb * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    seeds = _seeds(args)
    work = Path(args.workdir) / f"w{wid}"
    crashes = Path(args.crashes)
    counts: dict[str, int] = {}
    last = time.monotonic()
    done = 0
    for i in range(start, total, nworkers):
        seed, ops = make_case(seeds, args.seed, i)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        marker = work.parent / f"w{wid}.current"
        marker.write_text(f"{i} materialize")  # a mutator stuck on its own input is no finding
        path = fuzzlib.materialize(seed, ops, work)
        marker.write_text(f"{i} contract")
        outcome = fuzzlib.run_contract(path, args.time_limit,
                                       check_memory=i % args.memory_every == 0)
        counts[outcome.status] = counts.get(outcome.status, 0) + 1
        done += 1
        if outcome.violation:
            saved = _save(crashes, seed, ops, {"status": outcome.status, "detail": outcome.detail,
                          "seconds": outcome.seconds}, work, args.seed, i)
            queue.put(("violation", wid, i, outcome.status, outcome.detail, str(saved)))
        now = time.monotonic()
        if now - last > 2.0:
            queue.put(("progress", wid, done, counts))
            counts, done, last = {}, 0, now
    queue.put(("progress", wid, done, counts))
    queue.put(("finished", wid))


def _seeds(args: argparse.Namespace) -> list[fuzzlib.Seed]:
    seeds = fuzzlib.load_seeds(include_large=args.large)
    if args.format != "all":
        seeds = [s for s in seeds if s.fmt == args.format]
    return seeds


def replay(path: Path, time_limit: float) -> int:
    info = json.loads((path / "case.json").read_text())
    target = path / "input" if info["entry"] == "." else path / "input" / info["entry"]
    with tempfile.TemporaryDirectory() as d:
        case = Path(d) / "case"
        shutil.copytree(path / "input", case)
        target = case if info["entry"] == "." else case / info["entry"]
        print(f"replaying {info['seed']} ops={info['ops']}")
        out = fuzzlib.run_contract(target, time_limit)
        print(out)
        if out.status == "crash":
            fuzzlib.exercise(target)  # again, to show the traceback
    return 1 if out.violation else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", type=int, default=10_000)
    ap.add_argument("--format", choices=["all", *fuzzlib.FORMATS], default="all")
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100_000)
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--time-limit", type=float, default=2.0, help="seconds per case")
    ap.add_argument("--memory-every", type=int, default=1,
                    help="trace the heap on every Nth case (tracemalloc costs ~2x)")
    ap.add_argument("--memory-cap-gb", type=float, default=4.0,
                    help="address-space cap per worker (a safety net, 0 = none)")
    ap.add_argument("--large", action="store_true", help="also mutate the real models (slow)")
    ap.add_argument("--crashes", default=str(REPO / "fuzz-crashes"))
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--replay", type=Path, help="re-run one saved crash folder")
    args = ap.parse_args()
    if args.replay:
        return replay(args.replay, args.time_limit)
    args.workdir = args.workdir or tempfile.mkdtemp(prefix="ckptdoc-fuzz-")
    seeds = _seeds(args)
    print(f"fuzzing {args.cases} cases over {len(seeds)} seeds ({args.format}), seed {args.seed}, "
          f"{args.jobs} worker(s), {args.time_limit:g} s per case", flush=True)
    ctx = mp.get_context("fork")
    queue: mp.Queue = ctx.Queue()
    procs: dict[int, Any] = {}

    def spawn(wid: int, start: int) -> None:
        p = ctx.Process(target=worker, args=(wid, args.jobs, start, args.cases, args, queue),
                        daemon=True)
        p.start()
        procs[wid] = p

    for wid in range(args.jobs):
        spawn(wid, wid)
    # Workers are daemons, but a SIGTERM to this process would orphan them: stop them too.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _supervise(args, seeds, queue, procs, spawn)
    finally:
        for p in procs.values():
            if p.is_alive():
                p.kill()


def _supervise(args: argparse.Namespace, seeds: list[fuzzlib.Seed], queue: Any,
               procs: dict[int, Any], spawn: Any) -> int:
    started = time.monotonic()
    totals: dict[str, int] = {}
    done = 0
    violations: list[tuple[int, str, str, str]] = []
    heartbeat = {wid: time.monotonic() for wid in procs}
    finished: set[int] = set()
    last_print = 0.0
    while len(finished) < args.jobs:
        try:
            msg = queue.get(timeout=1.0)
        except Exception:  # noqa: BLE001 - queue.Empty
            msg = None
        if msg is not None:
            heartbeat[msg[1]] = time.monotonic()
            if msg[0] == "progress":
                done += msg[2]
                for k, v in msg[3].items():
                    totals[k] = totals.get(k, 0) + v
            elif msg[0] == "violation":
                violations.append((msg[2], msg[3], msg[4], msg[5]))
                print(f"  VIOLATION case {msg[2]}: {msg[3]} {msg[4][:200]} -> {msg[5]}", flush=True)
            elif msg[0] == "finished":
                finished.add(msg[1])
        for wid, p in list(procs.items()):
            if wid in finished:
                continue
            stalled = time.monotonic() - heartbeat[wid] > max(30.0, 10 * args.time_limit)
            if (p.is_alive() and not stalled) or p.exitcode == 0:
                continue  # running, or done with its "finished" message still queued
            # Died (a crash in C code) or hung past the in-process timer: record and replace.
            if p.is_alive():
                p.kill()
            p.join()
            cur = Path(args.workdir) / f"w{wid}.current"
            state = cur.read_text() if cur.exists() else f"{wid} contract"
            i_text, _, phase = state.partition(" ")
            i = int(i_text)
            seed, ops = make_case(seeds, args.seed, i)
            status = "hang" if stalled else f"died({p.exitcode})"
            if phase == "materialize":
                totals["mutator-failed"] = totals.get("mutator-failed", 0) + 1
                print(f"  (case {i}: the mutator itself {status}; skipped)", flush=True)
            else:
                # The worker's folder still holds the mutated input it was reading.
                saved = _save(Path(args.crashes), seed, ops, {"status": status, "detail": status},
                              Path(args.workdir) / f"w{wid}", args.seed, i)
                violations.append((i, status, status, str(saved)))
                totals[status] = totals.get(status, 0) + 1
                print(f"  VIOLATION case {i}: worker {status} -> {saved}", flush=True)
            done += 1
            heartbeat[wid] = time.monotonic()
            spawn(wid, i + args.jobs)
        now = time.monotonic()
        if now - last_print > 10 or len(finished) == args.jobs:
            last_print = now
            rate = done / max(now - started, 1e-9)
            print(f"[{now - started:7.0f} s] {done} cases, {rate:.1f} cases/s, "
                  f"{len(violations)} violation(s), outcomes {dict(sorted(totals.items()))}",
                  flush=True)
    elapsed = time.monotonic() - started
    print(f"DONE: {done} cases in {elapsed:.0f} s ({done / elapsed:.1f} cases/s), "
          f"{len(violations)} violation(s); outcomes {dict(sorted(totals.items()))}", flush=True)
    shutil.rmtree(args.workdir, ignore_errors=True)
    return 1 if violations else 0


if __name__ == "__main__":
    sys.exit(main())
