"""`--format junit`: JUnit XML for GitLab, Jenkins, Azure and other CI test views.

One testsuite per checkpoint, one testcase per BN layer. A layer fails when it has a finding
at or above `--fail-on`, so the test view agrees with the exit code; milder findings go to the
testcase's system-out. A file without BN layers is one passing testcase; an unreadable file is
one testcase with an <error>.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET

from ckptdoc.report.model import AuditReport, FileReport, RenderOptions, relative_posix
from ckptdoc.report.safe import printable
from ckptdoc.rules import Finding

NO_GROUPS = "(no batch-norm layers)"
READ = "(read)"


def _line(f: Finding) -> str:
    return f"{f.rule} ({f.severity.value}): {f.message}"


def _suite(file: FileReport, options: RenderOptions) -> ET.Element:
    path = relative_posix(file.path, options.root)
    suite = ET.Element("testsuite", name=path)
    tests = failures = errors = 0
    if file.format:
        props = ET.SubElement(suite, "properties")
        ET.SubElement(props, "property", name="format", value=file.format)
    if file.error is not None:
        case = ET.SubElement(suite, "testcase", classname=path, name=READ, time="0")
        err = ET.SubElement(case, "error", type="read-error", message=file.error)
        err.text = file.error
        tests, errors = 1, 1
    else:
        by_group: dict[str, list[Finding]] = {}
        for f in file.findings:
            by_group.setdefault(f.group, []).append(f)
        names = [g.name for g in file.groups]
        names += [g for g in by_group if g not in names]  # a finding on an unlisted group
        for name in names or [NO_GROUPS]:
            tests += 1
            case = ET.SubElement(suite, "testcase", classname=path, name=name, time="0")
            found = by_group.get(name, [])
            failing = [f for f in found if f.severity.rank >= options.fail_on.rank]
            if failing:
                failures += 1
                worst = max(failing, key=lambda f: f.severity.rank)
                fail = ET.SubElement(
                    case, "failure", type=worst.rule, message=f"{worst.rule}: {worst.message}"
                )
                fail.text = "\n".join(_line(f) for f in failing) + (
                    f"\nExplain: ckptdoc rule {worst.rule}"
                )
            rest = [f for f in found if f not in failing]
            if rest:
                ET.SubElement(case, "system-out").text = "\n".join(_line(f) for f in rest)
    if file.notes:
        ET.SubElement(suite, "system-err").text = "\n".join(file.notes)
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", str(errors))
    suite.set("skipped", "0")
    suite.set("time", "0")
    return suite


def to_element(report: AuditReport, options: RenderOptions | None = None) -> ET.Element:
    options = options or RenderOptions()
    root = ET.Element("testsuites", name="ckptdoc")
    totals = dict.fromkeys(("tests", "failures", "errors"), 0)
    for file in report.files:
        suite = _suite(file, options)
        root.append(suite)
        for key in totals:
            totals[key] += int(suite.get(key, "0"))
    for key, value in totals.items():
        root.set(key, str(value))
    root.set("skipped", "0")
    root.set("time", "0")
    return root


def _xml_safe(root: ET.Element) -> None:
    """Every attribute and text made printable (XML 1.0 forbids most control characters, and
    a report viewer is a terminal too); the line breaks of multi-line texts are kept."""
    for element in root.iter():
        for key, value in element.attrib.items():
            element.set(key, _lines(value))
        if element.text:
            element.text = _lines(element.text)


def _lines(text: str) -> str:
    return "\n".join(printable(line) for line in text.split("\n"))


def render(report: AuditReport, options: RenderOptions | None = None) -> str:
    root = to_element(report, options)
    _xml_safe(root)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, "unicode") + "\n"
