"""The layering the README's architecture section describes, checked on the imports.

Every module says what it must not know; this test makes the imports obey (statically, from
the source: a lazy import inside a function counts as much as one at the top, a relative
import as its absolute name, `importlib.import_module("ckptdoc.x")` as an import of x).
Each rule is a function of the module map, so `test_each_rule_catches_its_violation` can
inject a forbidden import of every kind into a copy and check that the rule sees it.
"""

from __future__ import annotations

import ast
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ckptdoc"
FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "jax", "torch")

Imports = list[tuple[str, str | None]]
ModuleMap = Mapping[str, Imports]


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Imports:
    """(module, name) for every import in the file; name is None for `import module`."""
    name = _module(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: Imports = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from its package, `level - 1` packages up
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.extend((module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr == "import_module" and node.args
              and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            out.append((node.args[0].value, None))
    return out


MODULES: dict[str, Imports] = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str, modules: ModuleMap = MODULES) -> set[str]:
    """What `module` imports: modules, and `package.name` for names imported from packages."""
    out = set()
    for mod, name in modules[module]:
        # `from package import submodule` is an import of the submodule; its package's
        # __init__ runs first for any submodule, which is no dependency on what it holds.
        if name is not None and f"{mod}.{name}" in modules:
            out.add(f"{mod}.{name}")
        else:
            out.add(mod)
    return out


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def _edges(modules: ModuleMap, who: Callable[[str], bool],
           forbidden: Callable[[str], bool]) -> list[str]:
    return sorted(f"{m} -> {t}" for m in modules if who(m) for t in _targets(m, modules)
                  if forbidden(t) and t != m)


# --------------------------------------------------------------------------- the rules

# (who, may import only these ckptdoc modules): the audit half, bottom up.
ALLOWED = {
    "ckptdoc.formats": ("ckptdoc.formats", "ckptdoc.checkpoint", "ckptdoc.errors",
                        "ckptdoc.install_hint"),
    "ckptdoc.install_hint": (),  # a leaf: package metadata only
    "ckptdoc.graph_bn": ("ckptdoc.formats.graph",),
    "ckptdoc.ledger": ("ckptdoc.groups", "ckptdoc.checkpoint"),
    "ckptdoc.rules": ("ckptdoc.rules", "ckptdoc.groups", "ckptdoc.ledger"),
    "ckptdoc.report": ("ckptdoc.report", "ckptdoc.rules", "ckptdoc.atomic", "ckptdoc.version"),
}


def layer_violations(modules: ModuleMap) -> list[str]:
    out = []
    for layer, allowed in ALLOWED.items():
        below = [a for a in allowed if a != "ckptdoc"]
        out += _edges(modules, lambda m, layer=layer: _in(m, layer),
                      lambda t, allowed=allowed, below=below: t.startswith("ckptdoc") and not (
                          (t == "ckptdoc" and "ckptdoc" in allowed) or _in(t, *below)))
    return out


# Pairs (importer, imported) that must never appear: what each module must not know.
FORBIDDEN = [
    ("ckptdoc.groups", "ckptdoc.rules"),  # discovery does not know the verdicts
    ("ckptdoc.groups", "ckptdoc.evidence"),
    ("ckptdoc.evidence", "ckptdoc.auditor"),
    ("ckptdoc.evidence", "ckptdoc.rules"),
    ("ckptdoc.config", "ckptdoc.recalibrate"),
    ("ckptdoc.config", "ckptdoc.auditor"),
    ("ckptdoc.recalibrate.pipeline", "ckptdoc.formats"),  # formats are the targets' business
    ("ckptdoc.recalibrate.options", "ckptdoc.recalibrate.targets"),
    ("ckptdoc.recalibrate.backends", "ckptdoc.recalibrate.targets"),
    ("ckptdoc.recalibrate.backends", "ckptdoc.recalibrate.pipeline"),
    ("ckptdoc.recalibrate.engine", "ckptdoc.recalibrate.targets"),
]


def _target_kinds(modules: ModuleMap) -> list[str]:
    """Every concrete target module (a new one is checked without editing this test)."""
    shared = {"ckptdoc.recalibrate.targets", "ckptdoc.recalibrate.targets.base",
              "ckptdoc.recalibrate.targets.bundle"}
    return [m for m in modules if _in(m, "ckptdoc.recalibrate.targets") and m not in shared]


def forbidden_violations(modules: ModuleMap) -> list[str]:
    out = []
    for who, what in FORBIDDEN:
        out += _edges(modules, lambda m, who=who: _in(m, who), lambda t, what=what: _in(t, what))
    kinds = _target_kinds(modules)
    # The pipeline knows the Target protocol, never a concrete target; targets never each other.
    out += _edges(modules, lambda m: m == "ckptdoc.recalibrate.pipeline",
                  lambda t: t in kinds)
    for kind in kinds:
        out += _edges(modules, lambda m, kind=kind: m == kind,
                      lambda t, kind=kind: t in kinds and t != kind)
    return out


def framework_violations(modules: ModuleMap) -> list[str]:
    return _edges(modules, lambda m: not _in(m, "ckptdoc.recalibrate", "ckptdoc.guard"),
                  lambda t: _in(t, *FRAMEWORKS))


# The recalibration policy, its options, the target protocol and the CLI are framework-free:
# a backend or a checkpoint kind is a target's business.
FRAMEWORK_FREE = ("ckptdoc.recalibrate", "ckptdoc.recalibrate.errors",
                  "ckptdoc.recalibrate.options",
                  "ckptdoc.recalibrate.pipeline", "ckptdoc.recalibrate.cli",
                  "ckptdoc.recalibrate.report", "ckptdoc.recalibrate.stats",
                  "ckptdoc.recalibrate.targets", "ckptdoc.recalibrate.targets.base",
                  "ckptdoc.recalibrate.targets.bundle", "ckptdoc.recalibrate.bundle_writer")


def framework_free_violations(modules: ModuleMap) -> list[str]:
    return _edges(modules, lambda m: m in FRAMEWORK_FREE, lambda t: _in(t, *FRAMEWORKS))


def audit_half_violations(modules: ModuleMap) -> list[str]:
    def audit(m: str) -> bool:
        return _in(m, "ckptdoc.formats", "ckptdoc.rules", "ckptdoc.report") or m in (
            "ckptdoc.groups", "ckptdoc.evidence", "ckptdoc.graph_bn", "ckptdoc.auditor",
            "ckptdoc.checkpoint", "ckptdoc.ledger", "ckptdoc.config", "ckptdoc.baseline")
    return _edges(modules, audit, lambda t: _in(t, "ckptdoc.recalibrate", "ckptdoc.guard"))


def command_violations(modules: ModuleMap) -> list[str]:
    # Only the command modules know the terminal; nothing imports a command module but the
    # CLI, and nothing imports the recalibrate CLI.
    out = _edges(modules, lambda m: not (_in(m, "ckptdoc.commands") or m in (
        "ckptdoc.cli", "ckptdoc.recalibrate.cli")), lambda t: _in(t, "ckptdoc.commands"))
    return out + _edges(modules, lambda m: True, lambda t: t == "ckptdoc.recalibrate.cli")


def cycles(modules: ModuleMap) -> list[list[str]]:
    """Import cycles among ckptdoc's modules, deferred imports included (Tarjan)."""
    graph = {m: {t for t in _targets(m, modules) if t in modules and t != m} for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def cycle_violations(modules: ModuleMap) -> list[str]:
    return [" <-> ".join(c) for c in cycles(modules)]


RULES: dict[str, Callable[[ModuleMap], list[str]]] = {
    "layers": layer_violations,
    "forbidden": forbidden_violations,
    "frameworks": framework_violations,
    "framework-free": framework_free_violations,
    "audit half": audit_half_violations,
    "commands": command_violations,
    "cycles": cycle_violations,
}


# --------------------------------------------------------------------------- the tests


def test_the_scan_sees_the_package() -> None:
    assert {"ckptdoc.formats.bundle", "ckptdoc.recalibrate.pipeline",
            "ckptdoc.recalibrate.targets.tf1_graph"} <= set(MODULES)
    assert "ckptdoc.recalibrate.options" in _targets("ckptdoc.recalibrate.pipeline")
    assert set(_target_kinds(MODULES)) == {"ckptdoc.recalibrate.targets.keras_file",
                                          "ckptdoc.recalibrate.targets.tf1_graph",
                                          "ckptdoc.recalibrate.targets.tf2_object"}


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [f"{m}: from {mod} import {name}" for m, imports in MODULES.items()
           for mod, name in imports
           if mod.startswith("ckptdoc") and name and name.startswith("_")
           and not name.startswith("__")]
    assert not bad


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_package_obeys(rule: str) -> None:
    assert RULES[rule](MODULES) == []


# One forbidden import of each kind, injected into a copy of the real module map: the rule
# that forbids it must see it (the test of the test).
INJECTED = [
    ("layers", "ckptdoc.formats.bundle", ("ckptdoc.rules", None)),
    ("layers", "ckptdoc.rules.checks", ("ckptdoc.report.model", None)),
    ("layers", "ckptdoc.graph_bn", ("ckptdoc.groups", None)),
    ("layers", "ckptdoc.formats.keras_h5", ("ckptdoc.groups", "BNGroup")),
    ("forbidden", "ckptdoc.groups", ("ckptdoc.rules", "RULES")),
    ("forbidden", "ckptdoc.evidence", ("ckptdoc.auditor", None)),
    ("forbidden", "ckptdoc.config", ("ckptdoc.recalibrate.options", None)),
    ("forbidden", "ckptdoc.recalibrate.pipeline", ("ckptdoc.formats", "open_checkpoint")),
    ("forbidden", "ckptdoc.recalibrate.pipeline",
     ("ckptdoc.recalibrate.targets", "keras_file")),
    ("forbidden", "ckptdoc.recalibrate.options", ("ckptdoc.recalibrate.targets.base", None)),
    ("forbidden", "ckptdoc.recalibrate.backends.jax",
     ("ckptdoc.recalibrate.targets.keras_file", None)),
    ("forbidden", "ckptdoc.recalibrate.targets.keras_file",
     ("ckptdoc.recalibrate.targets.tf1_graph", None)),
    ("frameworks", "ckptdoc.auditor", ("tensorflow", None)),
    ("frameworks", "ckptdoc.formats.keras_h5", ("keras.saving", "load_model")),
    ("framework-free", "ckptdoc.recalibrate.pipeline", ("keras", None)),
    ("audit half", "ckptdoc.auditor", ("ckptdoc.recalibrate.observe", None)),
    ("audit half", "ckptdoc.report.text", ("ckptdoc.guard", None)),
    ("commands", "ckptdoc.auditor", ("ckptdoc.commands.common", None)),
    ("commands", "ckptdoc.recalibrate.api", ("ckptdoc.recalibrate.cli", None)),
    ("cycles", "ckptdoc.checkpoint", ("ckptdoc.formats.bundle", None)),
    ("cycles", "ckptdoc.recalibrate.errors", ("ckptdoc.recalibrate.api", None)),
]


@pytest.mark.parametrize(("rule", "module", "imported"), INJECTED)
def test_each_rule_catches_its_violation(rule: str, module: str,
                                         imported: tuple[str, str | None]) -> None:
    copy = {m: list(i) for m, i in MODULES.items()}
    copy[module].append(imported)
    assert RULES[rule](copy), f"{rule} missed {module} -> {imported}"


def test_relative_and_importlib_imports_are_seen(tmp_path: Path) -> None:
    pkg = tmp_path / "ckptdoc" / "recalibrate" / "targets"
    pkg.mkdir(parents=True)
    src = pkg / "new_kind.py"
    src.write_text("from . import keras_file\nfrom ..pipeline import run\n"
                   "import importlib\nimportlib.import_module('ckptdoc.recalibrate.cli')\n")
    global PACKAGE
    saved, PACKAGE = PACKAGE, tmp_path / "ckptdoc"
    try:
        found = _imports(src)
    finally:
        PACKAGE = saved
    assert ("ckptdoc.recalibrate.targets", "keras_file") in found
    assert ("ckptdoc.recalibrate.pipeline", "run") in found
    assert ("ckptdoc.recalibrate.cli", None) in found
