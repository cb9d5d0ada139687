"""The layering the README's architecture section describes, checked on the imports.

Every module says what it must not know; this test makes the imports obey (statically, from
the source: a lazy import inside a function counts as much as one at the top).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "ckptdoc"
FRAMEWORKS = ("tensorflow", "keras", "tf_keras", "jax", "torch")


def _module(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, str | None]]:
    """(module, name) for every import in the file; name is None for `import module`."""
    out: list[tuple[str, str | None]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.extend((node.module, a.name) for a in node.names)
        elif isinstance(node, ast.Import):
            out.extend((a.name, None) for a in node.names)
    return out


MODULES = {_module(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(module: str) -> set[str]:
    """What `module` imports: modules, and `package.name` for names imported from packages."""
    out = set()
    for mod, name in MODULES[module]:
        out.add(mod)
        if name is not None and f"{mod}.{name}" in MODULES:
            out.add(f"{mod}.{name}")
    return out


def _in(module: str, *prefixes: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_the_scan_sees_the_package() -> None:
    assert {"ckptdoc.formats.bundle", "ckptdoc.recalibrate.pipeline",
            "ckptdoc.recalibrate.targets.tf1_graph"} <= set(MODULES)
    assert "ckptdoc.recalibrate.options" in _targets("ckptdoc.recalibrate.pipeline")


def test_no_private_name_is_imported_across_modules() -> None:
    bad = [f"{m}: from {mod} import {name}" for m, imports in MODULES.items()
           for mod, name in imports
           if mod.startswith("ckptdoc") and name and name.startswith("_")
           and not name.startswith("__")]
    assert not bad


# (who, may import only these ckptdoc modules): the audit half, bottom up.
ALLOWED = {
    "ckptdoc.formats": ("ckptdoc.formats", "ckptdoc.checkpoint", "ckptdoc.errors",
                        "ckptdoc.install_hint"),
    "ckptdoc.install_hint": (),  # a leaf: package metadata only
    "ckptdoc.graph_bn": ("ckptdoc.formats.graph",),
    "ckptdoc.ledger": ("ckptdoc.groups", "ckptdoc.checkpoint"),
    "ckptdoc.rules": ("ckptdoc.rules", "ckptdoc.groups", "ckptdoc.ledger"),
    "ckptdoc.report": ("ckptdoc.report", "ckptdoc.rules", "ckptdoc.atomic", "ckptdoc"),
}


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_audit_layers_import_only_what_is_below_them(layer: str) -> None:
    allowed = ALLOWED[layer]
    bad = [f"{m} -> {t}" for m in MODULES if _in(m, layer)
           for t in _targets(m) if t.startswith("ckptdoc") and not (
               t == "ckptdoc" and "ckptdoc" in allowed or _in(t, *[a for a in allowed
                                                                   if a != "ckptdoc"]))]
    assert not bad


def test_only_recalibrate_and_guard_know_a_framework() -> None:
    bad = [f"{m} -> {t}" for m in MODULES if not _in(m, "ckptdoc.recalibrate", "ckptdoc.guard")
           for t in _targets(m) if _in(t, *FRAMEWORKS)]
    assert not bad


# The recalibration policy, its options, the target protocol and the CLI are framework-free:
# a backend or a checkpoint kind is a target's business.
FRAMEWORK_FREE = ("ckptdoc.recalibrate", "ckptdoc.recalibrate.options",
                  "ckptdoc.recalibrate.pipeline", "ckptdoc.recalibrate.cli",
                  "ckptdoc.recalibrate.report", "ckptdoc.recalibrate.stats",
                  "ckptdoc.recalibrate.targets", "ckptdoc.recalibrate.targets.base",
                  "ckptdoc.recalibrate.targets.bundle", "ckptdoc.recalibrate.bundle_writer")


@pytest.mark.parametrize("module", FRAMEWORK_FREE)
def test_recalibration_policy_is_framework_free(module: str) -> None:
    assert not [t for t in _targets(module) if _in(t, *FRAMEWORKS)]


def test_the_cli_is_the_only_way_in_from_commands() -> None:
    # Only the command modules know the terminal; nothing imports a command module.
    users_of_commands = {m for m in MODULES for t in _targets(m) if _in(t, "ckptdoc.commands")}
    assert users_of_commands <= {"ckptdoc.cli", "ckptdoc.recalibrate.cli"} | {
        m for m in MODULES if _in(m, "ckptdoc.commands")}
    assert not [m for m in MODULES for t in _targets(m) if t == "ckptdoc.recalibrate.cli"]


def test_targets_do_not_know_each_other() -> None:
    kinds = ("keras_file", "tf1_graph", "tf2_object")
    for kind in kinds:
        others = {f"ckptdoc.recalibrate.targets.{k}" for k in kinds if k != kind}
        assert not _targets(f"ckptdoc.recalibrate.targets.{kind}") & others


def test_the_audit_half_never_imports_recalibrate_or_guard() -> None:
    audit = [m for m in MODULES if _in(m, "ckptdoc.formats", "ckptdoc.rules", "ckptdoc.report")
             or m in ("ckptdoc.groups", "ckptdoc.evidence", "ckptdoc.graph_bn",
                      "ckptdoc.auditor", "ckptdoc.checkpoint")]
    assert not [f"{m} -> {t}" for m in audit for t in _targets(m)
                if _in(t, "ckptdoc.recalibrate", "ckptdoc.guard")]
