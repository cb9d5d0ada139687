"""What the two TF checkpoint targets share: where their output goes (a new prefix in a
sibling folder, never over the input) and how it is checked before any work."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ckptdoc.errors import CheckpointError


@dataclass(frozen=True)
class BundleOutput:
    path: Path  # the bundle's prefix

    def default_output(self) -> Path:
        from ckptdoc.recalibrate.bundle_writer import default_output

        return default_output(self.path)

    def check_output(self, dest: Path, in_place: bool) -> None:
        from ckptdoc.recalibrate.bundle_writer import IN_PLACE_REFUSAL, check_destination

        if in_place:
            raise CheckpointError(self.path, IN_PLACE_REFUSAL)
        check_destination(self.path, dest)
