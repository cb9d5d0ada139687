"""Project configuration: `[tool.ckptdoc]` in `pyproject.toml`, or a `ckptdoc.toml`.

Found by walking up from the working directory; in each folder a `ckptdoc.toml` wins over a
`pyproject.toml`, and a `pyproject.toml` without a `[tool.ckptdoc]` table is passed over (like
ruff). Paths and globs in the file are relative to the folder that holds it.

```toml
[tool.ckptdoc]
select = ["BN"]                      # rule codes or prefixes; default: every rule
ignore = ["BN006"]
fail-on = "warning"                  # error | warning | info
severity = { BN005 = "error" }       # per-rule severity
exclude = ["legacy/**", "*.tmp.h5"]  # never audited
extend-exclude = ["scratch/**"]     # added to exclude (as ruff's)
per-file-ignores = { "experiments/**" = ["BN005"] }
baseline = "ckptdoc-baseline.json"   # known findings, see --baseline

[tool.ckptdoc.tolerances]
barely-moved = 0.05
dead-variance = 1e-6
```

A key this module does not know, or a value of the wrong kind, is a ConfigError naming the
file and the key: a typo must not silently switch a gate off.
"""

from __future__ import annotations

import fnmatch
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ckptdoc.rules import RULES, Severity, unknown_codes

KEYS = (
    "select",
    "ignore",
    "fail-on",
    "severity",
    "tolerances",
    "per-file-ignores",
    "exclude",
    "extend-exclude",
    "baseline",
)
TOLERANCE_KEYS = {
    "barely-moved": "barely_moved",
    "dead-variance": "dead_variance",
    "initial-weight": "initial_weight",
    "trained-param": "trained_param",
}


class ConfigError(Exception):
    """A configuration file that cannot be used; the message names the file and the key."""


@dataclass(frozen=True)
class Config:
    """Settings from a configuration file; None / empty where the file says nothing."""

    path: Path | None = None
    root: Path = field(default_factory=Path.cwd)
    select: tuple[str, ...] | None = None
    ignore: tuple[str, ...] = ()
    fail_on: Severity | None = None
    severity: Mapping[str, Severity] = field(default_factory=dict)
    tolerances: Mapping[str, float] = field(default_factory=dict)  # Tolerances field names
    per_file_ignores: tuple[tuple[str, tuple[str, ...]], ...] = ()
    exclude: tuple[str, ...] = ()
    baseline: Path | None = None

    def relative(self, path: str | Path) -> str:
        """`path` as the globs in this file see it: relative to its folder, posix."""
        from ckptdoc.report.model import relative_posix

        return relative_posix(path, self.root)

    def is_excluded(self, path: str | Path) -> bool:
        rel = self.relative(path)
        return any(glob_match(rel, pattern) for pattern in self.exclude)

    def ignored_for(self, path: str | Path) -> tuple[str, ...]:
        """Rule codes that `per-file-ignores` switches off for `path`."""
        rel = self.relative(path)
        return tuple(
            code
            for pattern, codes in self.per_file_ignores
            if glob_match(rel, pattern)
            for code in codes
        )


def glob_match(rel: str, pattern: str) -> bool:
    """gitignore-like matching on a relative posix path.

    A pattern without `/` matches any path component (`*.h5`, `legacy`); one with `/` matches
    from the root (`models/old/*`, `legacy/**`); a pattern also matches everything under a
    folder it matches. `*` crosses `/` as in fnmatch, `**/` may match nothing.
    """
    pattern = pattern.strip()
    if pattern.startswith("./"):
        pattern = pattern[2:]
    pattern = pattern.rstrip("/")
    if not pattern:
        return False
    parts = rel.split("/")
    candidates = {"/".join(parts[: i + 1]) for i in range(len(parts))}
    if "/" not in pattern:
        return any(fnmatch.fnmatchcase(part, pattern) for part in parts)
    variants = {pattern}
    while pattern.startswith("**/"):  # `**/x` also matches `x` at the root
        pattern = pattern[3:]
        variants.add(pattern)
    return any(fnmatch.fnmatchcase(c, v) for c in candidates for v in variants)


def find_config(start: str | Path | None = None) -> Path | None:
    """The nearest `ckptdoc.toml`, or `pyproject.toml` with a `[tool.ckptdoc]` table."""
    here = Path(start or Path.cwd()).absolute()
    for folder in (here, *here.parents):
        own = folder / "ckptdoc.toml"
        if own.is_file():
            return own
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file() and "ckptdoc" in _read_toml(pyproject).get("tool", {}):
            return pyproject
    return None


def discover(start: str | Path | None = None) -> Config:
    """The configuration that applies in `start` (default: the working directory)."""
    path = find_config(start)
    return load_config(path) if path is not None else Config(root=Path(start or Path.cwd()))


def load_config(path: str | Path) -> Config:
    """Read and validate one configuration file."""
    path = Path(path)
    data = _read_toml(path)
    if path.name == "pyproject.toml":
        table = data.get("tool", {}).get("ckptdoc", {})
        where = f"{path}: [tool.ckptdoc]"
    else:
        table = data
        where = str(path)
    return parse_config(table, path, where)


def parse_config(table: Mapping[str, Any], path: Path, where: str | None = None) -> Config:
    """Validate a `[tool.ckptdoc]` table; `path` is the file it came from."""
    where = where or str(path)
    if not isinstance(table, Mapping):
        raise ConfigError(f"{where}: expected a table")
    unknown = [k for k in table if k not in KEYS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(KEYS)})"
        )
    root = path.parent.absolute()
    select = table.get("select")
    baseline = table.get("baseline")
    if baseline is not None and not (isinstance(baseline, str) and baseline):
        raise ConfigError(f"{where}: 'baseline' must be a file name, got {baseline!r}")
    return Config(
        path=path,
        root=root,
        select=_codes(where, "select", select) if select is not None else None,
        ignore=_codes(where, "ignore", table.get("ignore", [])),
        fail_on=_severity(where, "fail-on", table["fail-on"]) if "fail-on" in table else None,
        severity=_severities(where, table.get("severity", {})),
        tolerances=_tolerances(where, table.get("tolerances", {})),
        per_file_ignores=_per_file(where, table.get("per-file-ignores", {})),
        # `extend-exclude` (as ruff's) adds to `exclude`; ckptdoc has no default excludes
        # to replace, so the two simply add up.
        exclude=(*_strings(where, "exclude", table.get("exclude", [])),
                 *_strings(where, "extend-exclude", table.get("extend-exclude", []))),
        baseline=root / baseline if baseline else None,
    )


def _read_toml(path: Path) -> dict[str, Any]:
    # Imported here: a run with no pyproject.toml or ckptdoc.toml around never needs it.
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _strings(where: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, Sequence) or isinstance(value, str):
        raise ConfigError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    if not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{where}: {key!r} must be a list of strings, got {value!r}")
    return tuple(value)


def _codes(where: str, key: str, value: Any) -> tuple[str, ...]:
    codes = tuple(c.strip().upper() for c in _strings(where, key, value))
    bad = unknown_codes(codes)
    if bad:
        raise ConfigError(
            f"{where}: {key!r} has unknown rule code {bad[0]!r} (known: {', '.join(RULES)})"
        )
    return codes


def _severity(where: str, key: str, value: Any) -> Severity:
    try:
        return Severity(str(value).lower()) if isinstance(value, str) else Severity(value)
    except ValueError:
        choices = ", ".join(s.value for s in Severity)
        raise ConfigError(f"{where}: {key!r} must be one of {choices}, got {value!r}") from None


def _severities(where: str, value: Any) -> dict[str, Severity]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: 'severity' must be a table like {{ BN005 = \"error\" }}")
    out: dict[str, Severity] = {}
    for prefix, level in value.items():
        key = f"severity.{prefix}"
        if unknown_codes([prefix]):
            raise ConfigError(f"{where}: {key!r}: unknown rule code (known: {', '.join(RULES)})")
        sev = _severity(where, key, level)
        out.update({code: sev for code in RULES if code.startswith(prefix.upper())})
    return out


def _tolerances(where: str, value: Any) -> dict[str, float]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: 'tolerances' must be a table")
    out: dict[str, float] = {}
    for key, number in value.items():
        if key not in TOLERANCE_KEYS:
            raise ConfigError(
                f"{where}: unknown key 'tolerances.{key}' "
                f"(known keys: {', '.join(TOLERANCE_KEYS)})"
            )
        if isinstance(number, bool) or not isinstance(number, int | float):
            raise ConfigError(f"{where}: 'tolerances.{key}' must be a number, got {number!r}")
        if not math.isfinite(number) or number < 0:
            raise ConfigError(
                f"{where}: 'tolerances.{key}' must be a finite number >= 0, got {number!r}"
            )
        out[TOLERANCE_KEYS[key]] = float(number)
    return out


def _per_file(where: str, value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    if not isinstance(value, Mapping):
        raise ConfigError(
            f"{where}: 'per-file-ignores' must be a table like {{ \"legacy/**\" = [\"BN005\"] }}"
        )
    return tuple(
        (pattern, _codes(where, f"per-file-ignores.{pattern}", codes))
        for pattern, codes in value.items()
    )
