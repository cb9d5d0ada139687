"""CK rules: the model file itself carries code. Reads the config as plain JSON, runs nothing.

Unlike the BN rules these look at a whole file's model config (`model_config` of a Keras `.h5`,
`config.json` of a `.keras`), so their group-level check is a no-op and `code_findings` produces
their findings; the finding's group is the layer that holds the code.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from ckptdoc.rules.base import Finding, Severity
from ckptdoc.rules.checks import rule

#: Packages whose classes Keras itself deserializes (Keras 3 refuses to import any other).
KERAS_PACKAGES = frozenset({"keras", "keras_hub", "keras_cv", "keras_nlp", "tf_keras"})
#: Lambda layers, and Keras 3's serialized Python lambdas (`__lambda__`, e.g. as an
#: activation): their config holds Python bytecode or source that runs on load.
CODE_CLASSES = frozenset({"Lambda", "__lambda__"})
_MAX_NODES = 2_000_000  # values walked; a config past this is hostile, and said to be
_CUT = "\0cut"


@rule(
    "CK001",
    Severity.WARNING,
    "model file contains code",
    """
The model's config names a `Lambda` layer (whose config holds marshalled Python bytecode or
source) or a class / function from a module outside Keras. Loading the model with Keras runs
that code (Lambda, with `safe_mode=False`) or needs that module imported: the file is a program,
not just weights. ckptdoc reads the config as plain JSON and never runs or imports anything.

Fix: load such files only from sources you trust. Prefer replacing `Lambda` layers with a
small registered custom layer (`@keras.saving.register_keras_serializable`) whose code lives in
your repository, not in the model file. `ckptdoc recalibrate` refuses these files unless given
`--allow-unsafe-code`.
""",
    fix="Load this file only from a source you trust.",
    scope="file",
)
def _file_level(values: Any, tol: Any) -> None:
    """Group-level no-op: CK001 is found by `code_findings` on the whole model config."""
    return None


def _layer_name(entry: Mapping[str, Any]) -> str | None:
    cfg = entry.get("config")
    name = cfg.get("name") if isinstance(cfg, Mapping) else None
    name = name if name is not None else entry.get("name")
    return name if isinstance(name, str) and name else None


def _walk(node: Any, layer: str) -> Iterator[tuple[str, Mapping[str, Any], str]]:
    """Yield (enclosing layer name, object entry, its class name) for every serialized object,
    depth first in file order. Iterative: a hostile depth costs no recursion; past `_MAX_NODES`
    values it yields one `(layer, {}, _CUT)` instead of stopping silently."""
    stack: list[tuple[Any, str]] = [(node, layer)]
    seen = 0
    while stack:
        item, where = stack.pop()
        seen += 1
        if seen > _MAX_NODES:
            yield where, {}, _CUT
            return
        if isinstance(item, Mapping):
            cls = item.get("class_name")
            if isinstance(cls, str):
                if isinstance(item.get("config"), Mapping) and "name" in item["config"]:
                    where = _layer_name(item) or where
                yield where, item, cls
            stack.extend((value, where) for value in reversed(list(item.values())))
        elif isinstance(item, list):
            stack.extend((value, where) for value in reversed(item))


def _foreign_module(entry: Mapping[str, Any]) -> str | None:
    module = entry.get("module")
    if not isinstance(module, str) or not module:
        return None  # Keras 2 configs have no module: classes resolve inside Keras
    if module.split(".", 1)[0] in KERAS_PACKAGES:
        return None
    return module


def code_findings(config: Any, severity: Severity = Severity.WARNING) -> list[Finding]:
    """CK001 findings for a model config (parsed JSON); one per offending object."""
    findings: list[Finding] = []
    seen: set[tuple[str, str, str]] = set()
    for layer, entry, cls in _walk(config, "(model)"):
        if cls == _CUT:
            findings.append(Finding(
                "CK001", severity, layer,
                f"the model config is too large to check for code (over {_MAX_NODES:,} values): "
                "ckptdoc cannot verify that it holds none; treat the file as untrusted",
                {"cannot_verify": True}))
            break
        if cls in CODE_CLASSES:
            cfg = entry.get("config")
            kind = cfg.get("function_type") if isinstance(cfg, Mapping) else None
            code = "source" if kind == "raw" else "bytecode"
            what = f"Lambda layer holds Python {code}" if cls == "Lambda" else (
                f"a serialized Python lambda (bytecode) in layer {layer!r}"
            )
            key = (layer, "code", "")
            message = f"{what} that Keras runs when the model is loaded"
            details: dict[str, Any] = {"class_name": cls}
        else:
            module = _foreign_module(entry)
            if module is None:
                continue
            key = (layer, cls, module)
            message = (
                f"{cls!r} comes from module {module!r}, outside Keras: loading the model "
                "imports and runs that module's code"
            )
            details = {"class_name": cls, "module": module}
        if key in seen:
            continue
        seen.add(key)
        findings.append(Finding("CK001", severity, layer, message, details))
    return findings
