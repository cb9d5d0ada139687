"""`.gitignore` and `.ignore` files as git reads them, for folder scans: what the user's
repository says is not theirs (downloaded datasets, caches, outputs) is not audited. Patterns
through `pathspec` (git's wildmatch); deeper files override shallower ones, a negation
re-includes, and nothing below an ignored folder is visited. Explicit paths never come here.
Knows paths, nothing about checkpoints.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Ignores", "IGNORE_FILES"]

IGNORE_FILES = (".gitignore", ".ignore")


@dataclass(frozen=True)
class Ignores:
    """The ignore files in force for one folder: (the folder each came from, its patterns)."""

    specs: tuple[tuple[Path, Any], ...] = ()

    @classmethod
    def above(cls, root: Path) -> Ignores:
        """The ignore files of `root`'s repository from its top down to `root` (exclusive),
        and `.git/info/exclude`: a scan of `models/` obeys the repository's `.gitignore`."""
        root = root.resolve()
        top = next((p for p in (root, *root.parents) if (p / ".git").exists()), None)
        if top is None:
            return cls()
        out = cls()._with(top / ".git" / "info", ("exclude",), base=top)
        for folder in reversed([p for p in root.parents if p.is_relative_to(top)]):
            out = out._with(folder, IGNORE_FILES)
        return out

    def entering(self, folder: Path) -> Ignores:
        """These, plus `folder`'s own ignore files."""
        return self._with(folder, IGNORE_FILES)

    def ignored(self, path: Path, is_dir: bool) -> bool:
        verdict = False
        for base, spec in self.specs:
            try:
                rel = path.resolve().relative_to(base).as_posix()
            except ValueError:
                continue
            result = spec.check_file(rel + "/" if is_dir else rel)
            if result.include is not None:
                verdict = bool(result.include)
        return verdict

    def _with(self, folder: Path, names: tuple[str, ...], base: Path | None = None) -> Ignores:
        lines: list[str] = []
        for name in names:
            f = folder / name
            if f.is_file() and not f.is_symlink():
                try:
                    lines += f.read_text(encoding="utf-8", errors="replace").splitlines()
                except OSError:
                    continue
        if not lines:
            return self
        import pathspec

        spec = pathspec.GitIgnoreSpec.from_lines(lines)
        return Ignores((*self.specs, ((base or folder).resolve(), spec)))
