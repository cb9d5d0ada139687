"""Read a `torch.save` pickle without unpickling it: an opcode-level interpreter that builds
plain data and never imports or calls anything.

A pickle is a program: `GLOBAL` names a callable, `REDUCE` calls it. Here `GLOBAL` only
records the name, and `REDUCE` / `NEWOBJ` produce a value only for the globals torch itself
writes into a state_dict (an `OrderedDict`, `_rebuild_tensor_v2` and friends, the typed
storage classes of persistent ids). Any other global (`os.system`, `builtins.eval`, a user's
class) becomes an inert `Opaque` value and is listed in `Unpickled.globals_seen`, so the audit
can report the file as code (CK001), as modelscan and picklescan do. Nothing a file chooses
ever runs.

Untrusted input: every length is checked, the program, the stack and the memo are bounded,
and a malformed program raises `PickleError` (a ValueError).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PickleError", "Global", "Opaque", "StorageRef", "TensorRef", "Unpickled",
           "read_pickle", "SAFE_GLOBALS"]

#: Most opcodes one pickle may run, and most values on the stack / in the memo.
MAX_OPS = 20_000_000
MAX_STACK = 1_000_000


class PickleError(ValueError):
    """The bytes are not a pickle this reader can follow."""


@dataclass(frozen=True)
class Global:
    module: str
    name: str

    @property
    def dotted(self) -> str:
        return f"{self.module}.{self.name}"


@dataclass
class Opaque:
    """A value a global outside the allow-list would have built: never built."""

    made_by: str
    args: Any = None


@dataclass(frozen=True)
class StorageRef:
    """A persistent id `('storage', torch.FloatStorage, key, location, numel)`."""

    dtype: str  # torch storage class name: FloatStorage, HalfStorage, ...
    key: str
    numel: int


@dataclass(frozen=True)
class TensorRef:
    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]


#: The globals torch writes for a state_dict, and what each builds here.
SAFE_GLOBALS = frozenset({
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    *(f"torch.{t}Storage" for t in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                    "Short", "Char", "Byte", "Bool")),
    "torch.storage.UntypedStorage",
})


@dataclass
class Unpickled:
    value: Any
    #: Every global the program named, allowed or not (`module.name`).
    globals_seen: set[str] = field(default_factory=set)

    @property
    def unsafe_globals(self) -> list[str]:
        return sorted(g for g in self.globals_seen if g not in SAFE_GLOBALS)


class _Mark:
    pass


_MARK = _Mark()


def read_pickle(data: bytes) -> Unpickled:
    """Interpret the pickle `data` (protocols 2 to 5) into plain values."""
    try:
        return _Machine(data).run()
    except (IndexError, struct.error, UnicodeDecodeError, KeyError, TypeError) as exc:
        raise PickleError(f"malformed pickle: {type(exc).__name__}: {exc}") from exc


class _Machine:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0
        self.stack: list[Any] = []
        self.memo: dict[int, Any] = {}
        self.seen: set[str] = set()

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise PickleError("pickle runs past its end")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def push(self, value: Any) -> None:
        if len(self.stack) >= MAX_STACK:
            raise PickleError("pickle stack too deep")
        self.stack.append(value)

    def pop_mark(self) -> list[Any]:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i] is _MARK:
                items = self.stack[i + 1 :]
                del self.stack[i:]
                return items
        raise PickleError("pickle MARK missing")

    def memoize(self, index: int) -> None:
        if len(self.memo) >= MAX_STACK:
            raise PickleError("pickle memo too large")
        self.memo[index] = self.stack[-1]

    def run(self) -> Unpickled:  # noqa: C901, PLR0912, PLR0915 - one branch per opcode
        u32, i32 = struct.Struct("<I"), struct.Struct("<i")
        data = self.data
        for _ in range(MAX_OPS):
            if self.pos >= len(data):
                raise PickleError("pickle runs past its end")
            op = data[self.pos]
            self.pos += 1
            if op == 0x28:  # MARK
                self.push(_MARK)
            elif op == 0x58:  # BINUNICODE
                self.push(self.take(u32.unpack(self.take(4))[0]).decode("utf-8", "surrogatepass"))
            elif op == 0x8C:  # SHORT_BINUNICODE
                self.push(self.take(self.take(1)[0]).decode("utf-8", "surrogatepass"))
            elif op == 0x4B:  # BININT1
                self.push(self.take(1)[0])
            elif op == 0x71:  # BINPUT
                self.memoize(self.take(1)[0])
            elif op == 0x72:  # LONG_BINPUT
                self.memoize(u32.unpack(self.take(4))[0])
            elif op == 0x94:  # MEMOIZE
                self.memoize(len(self.memo))
            elif op == 0x68:  # BINGET
                self.push(self.memo[self.take(1)[0]])
            elif op == 0x6A:  # LONG_BINGET
                self.push(self.memo[u32.unpack(self.take(4))[0]])
            elif op == 0x63:  # GLOBAL: "module\nname\n"
                module = self._line()
                name = self._line()
                self._global(module, name)
            elif op == 0x93:  # STACK_GLOBAL
                name, module = self.stack.pop(), self.stack.pop()
                if not isinstance(module, str) or not isinstance(name, str):
                    raise PickleError("STACK_GLOBAL needs two strings")
                self._global(module, name)
            elif op == 0x74:  # TUPLE
                self.push(tuple(self.pop_mark()))
            elif op == 0x85:  # TUPLE1
                self.push((self.stack.pop(),))
            elif op == 0x86:  # TUPLE2
                b, a = self.stack.pop(), self.stack.pop()
                self.push((a, b))
            elif op == 0x87:  # TUPLE3
                c, b, a = self.stack.pop(), self.stack.pop(), self.stack.pop()
                self.push((a, b, c))
            elif op == 0x52:  # REDUCE
                args, func = self.stack.pop(), self.stack.pop()
                self.push(_call(func, args))
            elif op == 0x51:  # BINPERSID
                self.push(_persistent(self.stack.pop()))
            elif op == 0x89:  # NEWFALSE
                self.push(False)
            elif op == 0x88:  # NEWTRUE
                self.push(True)
            elif op == 0x29:  # EMPTY_TUPLE
                self.push(())
            elif op == 0x75:  # SETITEMS
                items = self.pop_mark()
                _setitems(self.stack[-1], items)
            elif op == 0x73:  # SETITEM
                value, key = self.stack.pop(), self.stack.pop()
                _setitems(self.stack[-1], [key, value])
            elif op == 0x4A:  # BININT
                self.push(i32.unpack(self.take(4))[0])
            elif op == 0x4D:  # BININT2
                self.push(struct.unpack("<H", self.take(2))[0])
            elif op == 0x7D:  # EMPTY_DICT
                self.push({})
            elif op == 0x5D:  # EMPTY_LIST
                self.push([])
            elif op == 0x4E:  # NONE
                self.push(None)
            elif op == 0x62:  # BUILD: an object's state; plain data needs none of it
                self.stack.pop()
            elif op == 0x81:  # NEWOBJ
                args, cls = self.stack.pop(), self.stack.pop()
                self.push(Opaque(cls.dotted if isinstance(cls, Global) else repr(cls), args))
            elif op == 0x80:  # PROTO
                self.take(1)
            elif op == 0x95:  # FRAME
                self.take(8)
            elif op == 0x2E:  # STOP
                if not self.stack:
                    raise PickleError("pickle ends with an empty stack")
                return Unpickled(self.stack.pop(), self.seen)
            elif op == 0x8F:  # EMPTY_SET
                self.push(set())
            elif op == 0x8A:  # LONG1
                n = self.take(1)[0]
                self.push(int.from_bytes(self.take(n), "little", signed=True))
            elif op == 0x47:  # BINFLOAT
                self.push(struct.unpack(">d", self.take(8))[0])
            elif op == 0x8D:  # BINUNICODE8
                self.push(self.take(struct.unpack("<Q", self.take(8))[0]).decode("utf-8"))
            elif op == 0x55:  # SHORT_BINSTRING
                self.push(self.take(self.take(1)[0]).decode("latin-1"))
            elif op == 0x54:  # BINSTRING
                self.push(self.take(i32.unpack(self.take(4))[0]).decode("latin-1"))
            elif op == 0x43:  # SHORT_BINBYTES
                self.push(self.take(self.take(1)[0]))
            elif op == 0x42:  # BINBYTES
                self.push(self.take(u32.unpack(self.take(4))[0]))
            elif op == 0x8E:  # BINBYTES8
                self.push(self.take(struct.unpack("<Q", self.take(8))[0]))
            elif op == 0x6C:  # LIST
                self.push(self.pop_mark())
            elif op == 0x64:  # DICT
                items = self.pop_mark()
                self.push(dict(zip(items[::2], items[1::2], strict=False)))
            elif op == 0x61:  # APPEND
                value = self.stack.pop()
                _append(self.stack[-1], [value])
            elif op == 0x65:  # APPENDS
                items = self.pop_mark()
                _append(self.stack[-1], items)
            elif op == 0x90:  # ADDITEMS
                items = self.pop_mark()
                if isinstance(self.stack[-1], set):
                    self.stack[-1].update(i for i in items if _hashable(i))
            elif op == 0x92:  # NEWOBJ_EX
                _kwargs, args, cls = self.stack.pop(), self.stack.pop(), self.stack.pop()
                self.push(Opaque(cls.dotted if isinstance(cls, Global) else repr(cls), args))
            elif op == 0x30:  # POP
                self.stack.pop()
            elif op == 0x31:  # POP_MARK
                self.pop_mark()
            elif op == 0x32:  # DUP
                self.push(self.stack[-1])
            else:
                raise PickleError(f"unsupported pickle opcode 0x{op:02x} at byte {self.pos - 1}")
        raise PickleError("pickle runs too long")

    def _line(self) -> str:
        end = self.data.find(b"\n", self.pos, self.pos + 4096)
        if end < 0:
            raise PickleError("GLOBAL name not terminated")
        text = self.data[self.pos : end].decode("utf-8", "replace")
        self.pos = end + 1
        return text

    def _global(self, module: str, name: str) -> None:
        g = Global(module, name)
        self.seen.add(g.dotted)
        self.push(g)


def _hashable(x: Any) -> bool:
    try:
        hash(x)
    except TypeError:
        return False
    return True


def _append(target: Any, items: list[Any]) -> None:
    if isinstance(target, list):
        target.extend(items)


def _setitems(target: Any, items: list[Any]) -> None:
    if isinstance(target, dict):
        for k, v in zip(items[::2], items[1::2], strict=False):
            if _hashable(k):
                target[k] = v


def _call(func: Any, args: Any) -> Any:
    """The value an allow-listed callable builds; anything else an `Opaque`."""
    name = func.dotted if isinstance(func, Global) else repr(func)
    args = args if isinstance(args, tuple) else ()
    if name == "collections.OrderedDict":
        return dict(args[0]) if args and isinstance(args[0], dict) else {}
    if name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"):
        if len(args) >= 4 and isinstance(args[0], StorageRef):
            shape, stride = _ints(args[2]), _ints(args[3])
            offset = args[1] if isinstance(args[1], int) else 0
            if shape is not None and stride is not None and len(shape) == len(stride):
                return TensorRef(args[0], offset, shape, stride)
        return Opaque(name, args)
    if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
        return args[0] if args else Opaque(name)
    if name == "torch.Size":
        return tuple(args[0]) if args and isinstance(args[0], (tuple, list)) else ()
    return Opaque(name, args)


def _ints(x: Any) -> tuple[int, ...] | None:
    if isinstance(x, (tuple, list)) and all(isinstance(v, int) and v >= 0 for v in x):
        return tuple(x)
    return None


def _persistent(pid: Any) -> Any:
    """torch.save's persistent id of a storage: ('storage', <Global torch.XStorage>, key,
    location, numel)."""
    if (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"
            and isinstance(pid[1], Global) and isinstance(pid[4], int)):
        return StorageRef(pid[1].name, str(pid[2]), pid[4])
    return Opaque("persistent_id", pid)
