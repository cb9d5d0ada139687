"""`[tool.ckptdoc]` / ckptdoc.toml: discovery, parsing, validation, path matching."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptdoc.config import Config, ConfigError, discover, find_config, glob_match, load_config
from ckptdoc.rules import Severity

FULL = """
[project]
name = "demo"

[tool.ckptdoc]
select = ["BN"]
ignore = ["bn006"]
fail-on = "warning"
severity = { BN005 = "error", BN00 = "warning" }
exclude = ["legacy/**", "*.tmp.h5"]
per-file-ignores = { "experiments/**" = ["BN005"] }
baseline = "ci/ckptdoc-baseline.json"

[tool.ckptdoc.tolerances]
barely-moved = 0.1
dead-variance = 1e-5
"""


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_full_pyproject(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "pyproject.toml", FULL))
    assert cfg.select == ("BN",)
    assert cfg.ignore == ("BN006",)
    assert cfg.fail_on == Severity.WARNING
    # A prefix sets every rule it matches; a later exact code still wins in file order.
    assert cfg.severity["BN001"] == Severity.WARNING
    assert cfg.severity["BN005"] == Severity.WARNING
    assert cfg.tolerances == {"barely_moved": 0.1, "dead_variance": 1e-5}
    assert cfg.baseline == tmp_path.absolute() / "ci" / "ckptdoc-baseline.json"
    assert cfg.root == tmp_path.absolute()


def test_exact_severity(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "ckptdoc.toml", 'severity = { BN005 = "error" }\n'))
    assert dict(cfg.severity) == {"BN005": Severity.ERROR}


def test_discovery_walks_up_and_skips_pyproject_without_section(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", FULL)
    write(tmp_path / "pkg" / "pyproject.toml", "[project]\nname = 'inner'\n")
    deep = tmp_path / "pkg" / "models" / "x"
    deep.mkdir(parents=True)
    assert find_config(deep) == (tmp_path / "pyproject.toml").absolute()
    assert discover(deep).fail_on == Severity.WARNING


def test_ckptdoc_toml_wins_in_the_same_folder(tmp_path: Path) -> None:
    write(tmp_path / "pyproject.toml", FULL)
    write(tmp_path / "ckptdoc.toml", 'fail-on = "info"\n')
    assert find_config(tmp_path) == (tmp_path / "ckptdoc.toml").absolute()
    assert discover(tmp_path).fail_on == Severity.INFO


def test_no_config_gives_defaults(tmp_path: Path) -> None:
    cfg = discover(tmp_path)
    if cfg.path is not None:  # a config above tmp (unlikely): nothing to assert here
        pytest.skip(f"found {cfg.path} above the temporary directory")
    assert cfg == Config(root=tmp_path)
    assert cfg.select is None and cfg.fail_on is None and not cfg.exclude


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("selct = ['BN001']", "'selct'"),
        ("select = ['BN999']", "'select'"),
        ("select = 'BN001'", "'select'"),
        ("ignore = [1]", "'ignore'"),
        ("fail-on = 'fatal'", "'fail-on'"),
        ("severity = { BN005 = 'loud' }", "'severity.BN005'"),
        ("severity = { XX1 = 'error' }", "'severity.XX1'"),
        ("severity = 'error'", "'severity'"),
        ("[tolerances]\nbarely_moved = 0.1", "'tolerances.barely_moved'"),
        ("[tolerances]\nbarely-moved = 'x'", "'tolerances.barely-moved'"),
        ("[tolerances]\ndead-variance = -1.0", "'tolerances.dead-variance'"),
        ("per-file-ignores = { 'a/**' = ['NOPE'] }", "'per-file-ignores.a/**'"),
        ("exclude = 'legacy'", "'exclude'"),
        ("baseline = 3", "'baseline'"),
    ],
)
def test_bad_keys_and_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path / "ckptdoc.toml", text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert key in str(info.value)
    assert str(path) in str(info.value)


def test_bad_key_in_pyproject_names_the_section(tmp_path: Path) -> None:
    path = write(tmp_path / "pyproject.toml", "[tool.ckptdoc]\nfail_on = 'error'\n")
    with pytest.raises(ConfigError, match=r"\[tool.ckptdoc\]: unknown key 'fail_on'"):
        load_config(path)


def test_invalid_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "ckptdoc.toml", "select = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(path)


@pytest.mark.parametrize(
    ("rel", "pattern", "expected"),
    [
        ("legacy/a.h5", "legacy", True),
        ("models/legacy/a.h5", "legacy", True),
        ("legacy/a.h5", "legacy/**", True),
        ("legacy/deep/a.h5", "legacy/*", True),
        ("models/legacy/a.h5", "legacy/**", False),
        ("models/legacy/a.h5", "**/legacy/**", True),
        ("legacy/a.h5", "**/legacy/**", True),
        ("models/x.tmp.h5", "*.tmp.h5", True),
        ("models/x.h5", "*.tmp.h5", False),
        ("models/run1/model.ckpt", "models/run1", True),
        ("models/run10/model.ckpt", "models/run1", False),
        ("models/run1/model.ckpt", "./models/run1/", True),
    ],
)
def test_glob_match(rel: str, pattern: str, expected: bool) -> None:
    assert glob_match(rel, pattern) is expected


def test_exclude_and_per_file_ignores_are_relative_to_the_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "pyproject.toml", FULL))
    assert cfg.is_excluded(tmp_path / "legacy" / "old.h5")
    assert cfg.is_excluded(tmp_path / "models" / "a.tmp.h5")
    assert not cfg.is_excluded(tmp_path / "models" / "a.h5")
    assert cfg.ignored_for(tmp_path / "experiments" / "e1" / "m.h5") == ("BN005",)
    assert cfg.ignored_for(tmp_path / "models" / "m.h5") == ()


def test_extend_exclude_adds_to_exclude(tmp_path: Path) -> None:
    # Issue 25: ruff's `extend-exclude` was an unknown key.
    from ckptdoc.config import load_config

    path = tmp_path / "ckptdoc.toml"
    path.write_text('exclude = ["legacy/**"]\nextend-exclude = ["scratch/**"]\n')
    config = load_config(path)
    assert config.is_excluded(tmp_path / "legacy" / "a.h5")
    assert config.is_excluded(tmp_path / "scratch" / "b.h5")
    assert not config.is_excluded(tmp_path / "models" / "c.h5")
