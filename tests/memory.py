"""An in-memory Checkpoint for testing groups and rules without files."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo


class MemoryCheckpoint(Checkpoint):
    format = "memory"

    def __init__(
        self, values: Mapping[str, np.ndarray], layers: list[LayerNode] | None = None
    ) -> None:
        super().__init__(Path("<memory>"))
        self._values = {k: np.asarray(v) for k, v in values.items()}
        self._layers = layers
        self.reads: list[str] = []

    @property
    def tensors(self) -> Mapping[str, TensorInfo]:
        return {k: TensorInfo(k, v.dtype, tuple(v.shape)) for k, v in self._values.items()}

    def read(self, key: str) -> np.ndarray:
        self.reads.append(key)
        return self._values[key]

    @property
    def layers(self) -> list[LayerNode] | None:
        return self._layers
