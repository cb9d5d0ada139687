"""The format-neutral view of a checkpoint that every reader returns.

A `Checkpoint` maps variable keys to `TensorInfo` and reads one tensor on demand. Readers that
know the model's structure (object graphs, Keras files) also describe `LayerNode`s: a layer's
readable name, its class when known, and which of its local variable names map to which keys.
`groups.py` turns either view into BN groups; nothing here knows about batch norm.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from ckptdoc.formats.graph import Graph


@dataclass(frozen=True)
class TensorInfo:
    """What the index says about one variable, without reading its bytes."""

    key: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class LayerNode:
    """A layer (or any object owning variables) as the file's own structure describes it.

    `members` maps the layer-local variable name (`gamma`, `moving_mean`, `vars/2`, ...) to the
    key of that variable in `Checkpoint.tensors`. `class_name` is the Keras class when a config
    says so, else None; `config` is that layer's config dict when known.
    """

    name: str
    members: Mapping[str, str]
    class_name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    #: How the reader knows this layer: "config" (a model config names its class), "object
    #: graph", "structure" (the class is inferred from the variables' shapes / optimizer slots),
    #: "state_dict" (a PyTorch module with running statistics),
    #: or "names".
    found_by: str = "names"


@dataclass(frozen=True)
class StepCount:
    """How many training steps the file records, and which variable says so."""

    steps: int
    source: str


class Checkpoint(ABC):
    """An open checkpoint. Use as a context manager, or call `close()`."""

    #: Short machine-readable format id, e.g. "tf-bundle", "tf2-object", "keras2-h5".
    format: str = "unknown"

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    @abstractmethod
    def tensors(self) -> Mapping[str, TensorInfo]:
        """Every variable in the file, by key."""

    @abstractmethod
    def read(self, key: str) -> np.ndarray:
        """Read one tensor's value, touching only its bytes. Raises CheckpointError."""

    @property
    def layers(self) -> list[LayerNode] | None:
        """The file's own layer structure, or None when only flat names are known."""
        return None

    def graph(self) -> Graph | None:
        """The TF graph saved with the checkpoint (`.meta`, `saved_model.pb`), or None."""
        return None

    def step_count(self) -> StepCount | None:
        """The optimizer's step counter when the file holds one (`global_step`, `iterations`)."""
        return None

    @property
    def warnings(self) -> list[str]:
        """Things the reader noticed but could work around (e.g. a stale `checkpoint` file)."""
        return []

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release file handles."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
