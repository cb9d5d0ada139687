"""`--format sarif`: SARIF 2.1.0 for GitHub code scanning and other SARIF viewers.

Results point at a file that exists in the repository: a TensorFlow checkpoint's `.index`, a
SavedModel's `saved_model.pb`, a Keras file itself.

Checkpoints are binary, so results carry a file location without a region (GitHub shows them
at file level) and a logical location naming the BN layer. `partialFingerprints` hash rule +
path + group, so an alert keeps its identity across runs and rewrites of the file.
"""

from __future__ import annotations

import json
import re
from typing import Any
from urllib.parse import quote

from ckptdoc.report.model import (
    AuditReport,
    FileReport,
    RenderOptions,
    artifact_path,
    fingerprint,
    relative_posix,
)
from ckptdoc.rules import RULES, Finding, Rule, Severity

SCHEMA_URI = "https://json.schemastore.org/sarif-2.1.0.json"
# No informationUri / helpUri: the project has no published home page yet, and a link that
# does not resolve is worse than none (`ckptdoc rule CODE` is the help, in `help`).
FINGERPRINT = "ckptdocFinding/v1"
SRCROOT = "%SRCROOT%"

LEVEL = {Severity.ERROR: "error", Severity.WARNING: "warning", Severity.INFO: "note"}


def _rule_name(rule: Rule) -> str:
    # SARIF `name` is an identifier: "moving statistics missing" -> MovingStatisticsMissing
    return "".join(w[:1].upper() + w[1:] for w in re.split(r"[^A-Za-z0-9]+", rule.title) if w)


def _first_paragraph(text: str) -> str:
    return " ".join(text.strip().split("\n\n", 1)[0].split())


def _rule_descriptor(rule: Rule) -> dict[str, Any]:
    help_text = f"{rule.explanation}\n\nExplain it locally with `ckptdoc rule {rule.code}`."
    return {
        "id": rule.code,
        "name": _rule_name(rule),
        "shortDescription": {"text": rule.title[:1].upper() + rule.title[1:]},
        "fullDescription": {"text": _first_paragraph(rule.explanation)},
        "help": {"text": help_text, "markdown": help_text},
        "defaultConfiguration": {"level": LEVEL[rule.severity]},
        "properties": {"tags": ["batch-norm", "checkpoint", "ml-model"]},
    }


def _location(path: str, group: str | None = None) -> dict[str, Any]:
    # A URI reference: spaces and the like percent-encoded, `/` kept.
    uri = quote(path, safe="/")
    # GitHub code scanning shows a result only with `region.startLine` (sarif-sdk's GH1003);
    # a checkpoint has no lines, so the finding is placed on the file's first.
    loc: dict[str, Any] = {
        "physicalLocation": {"artifactLocation": {"uri": uri, "uriBaseId": SRCROOT},
                             "region": {"startLine": 1}}
    }
    if group is not None:
        loc["logicalLocations"] = [{"name": group, "kind": "object"}]
    return loc


def _result(finding: Finding, path: str, rule_index: dict[str, int]) -> dict[str, Any]:
    result: dict[str, Any] = {"ruleId": finding.rule}
    if finding.rule in rule_index:
        result["ruleIndex"] = rule_index[finding.rule]
    result.update(
        {
            "level": LEVEL[finding.severity],
            "message": {"text": f"{finding.group}: {finding.message}"},
            "locations": [_location(path, finding.group)],
            "partialFingerprints": {FINGERPRINT: fingerprint(finding.rule, path, finding.group)},
        }
    )
    return result


def _notification(file: FileReport, path: str) -> dict[str, Any]:
    return {
        "level": "error",
        "message": {"text": file.error or "could not be read"},
        "locations": [_location(path)],
        "descriptor": {"id": "read-error"},
    }


def to_dict(report: AuditReport, options: RenderOptions | None = None) -> dict[str, Any]:
    from ckptdoc.version import __version__

    options = options or RenderOptions()
    rules = list(RULES.values())
    rule_index = {r.code: i for i, r in enumerate(rules)}
    results: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    for file in report.files:
        path = relative_posix(artifact_path(file.path), options.root)
        if file.error is not None:
            notifications.append(_notification(file, path))
        elif file.skipped is not None:  # listed, so a scan says what it did not audit
            notifications.append({
                "level": "note",
                "message": {"text": f"{path}: skipped, {file.skipped}"},
                "locations": [_location(path)],
                "descriptor": {"id": "skipped"},
            })
        results.extend(_result(f, path, rule_index) for f in file.findings)
    invocation: dict[str, Any] = {
        "executionSuccessful": not any(n["level"] == "error" for n in notifications)}
    if notifications:
        invocation["toolExecutionNotifications"] = notifications
    return {
        "$schema": SCHEMA_URI,
        "version": "2.1.0",
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": "ckptdoc",
                        "version": __version__,
                        "semanticVersion": __version__,
                        "rules": [_rule_descriptor(r) for r in rules],
                    }
                },
                "invocations": [invocation],
                "columnKind": "unicodeCodePoints",
                "results": results,
            }
        ],
    }


def render(report: AuditReport, options: RenderOptions | None = None) -> str:
    return json.dumps(to_dict(report, options), indent=2) + "\n"
