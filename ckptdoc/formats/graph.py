"""TensorFlow graphs (`model.ckpt.meta`, `saved_model.pb`) as plain data, without TensorFlow.

Knows the bytes of MetaGraphDef / GraphDef / NodeDef / CollectionDef and nothing about batch
norm: `graph_bn.py` reads BN layers out of the `Graph` this returns. Only what an audit needs is
kept: each node's name, op, inputs (data and control), the scalar value of bool / float
constants, bool attributes; the graph's collections; which variables are trainable.

Untrusted input: every length is checked by the decoder in proto.py; a graph that cannot be
decoded raises `ProtoError` (a ValueError), which readers turn into a note, never a crash.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ckptdoc.formats.proto import ProtoError, iter_fields, parse

__all__ = [
    "Graph",
    "GraphNode",
    "graph_from_meta_bytes",
    "read_meta_graph",
    "read_savedmodel_graph",
    "MAX_GRAPH_BYTES",
    "GraphBudgetError",
]

#: A `.meta` of a large model is tens of MB; past this the file is not what it claims.
MAX_GRAPH_BYTES = 1 << 30

_DT_FLOAT, _DT_DOUBLE, _DT_BOOL = 1, 2, 10


@dataclass(frozen=True)
class GraphNode:
    """One NodeDef. `inputs` keep TF's spelling (`name`, `name:1`); control inputs are apart."""

    name: str
    op: str
    inputs: tuple[str, ...] = ()
    control_inputs: tuple[str, ...] = ()
    #: The scalar value of a bool or float `Const` (first element), else None.
    value: bool | float | None = None
    #: The values of a small integer `Const` (reduction axes), else None.
    ints: tuple[int, ...] | None = None
    #: Bool attributes (`is_training` of FusedBatchNorm, ...).
    flags: Mapping[str, bool] = field(default_factory=dict)
    #: Function attributes (`then_branch` of an `If` -> function name).
    funcs: Mapping[str, str] = field(default_factory=dict)
    #: For a node inlined from a branch of an `If`: (the predicate's input ref, which branch).
    guard: tuple[str, bool] | None = None
    #: For a functional `If` / call whose body was inlined: per output port, the refs of the
    #: inlined nodes that produce it (one per branch).
    results: tuple[tuple[str, ...], ...] = ()


@dataclass(frozen=True)
class Graph:
    """A decoded graph. `nodes` keeps file order."""

    source: Path
    nodes: Mapping[str, GraphNode]
    #: Collection name -> node names (`UPDATE_OPS`, `train_op`, ...) or, for variable
    #: collections, the variables' op names.
    collections: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def node(self, ref: str) -> GraphNode | None:
        """The node an input string (`name`, `name:1`, `^name`) refers to."""
        return self.nodes.get(node_name(ref))


def node_name(ref: str) -> str:
    """`^a/b:1` -> `a/b`."""
    ref = ref[1:] if ref.startswith("^") else ref
    name, _, port = ref.rpartition(":")
    return name if name and port.isdigit() else ref


def output_index(ref: str) -> int:
    name, _, port = ref.rpartition(":")
    return int(port) if name and port.isdigit() else 0


def read_meta_graph(path: Path) -> Graph:
    """Decode a MetaGraphDef file (`.meta`)."""
    return _graph_from_meta(path, _read(path))


def graph_from_meta_bytes(buf: bytes, source: Path) -> Graph:
    """Decode a serialized MetaGraphDef (e.g. `export_meta_graph().SerializeToString()` of a
    live graph); `source` names it in messages."""
    return _graph_from_meta(source, buf)


def read_savedmodel_graph(path: Path) -> Graph | None:
    """Decode the first MetaGraphDef of a `saved_model.pb`; None when it has no GraphDef nodes
    (TF2 SavedModels keep their ops in functions: their object graph is the better evidence)."""
    for field_no, _wire, value in iter_fields(_read(path)):
        if field_no == 2 and isinstance(value, bytes):
            graph = _graph_from_meta(path, value)
            return graph if graph.nodes else None
    return None


def _read(path: Path) -> bytes:
    size = path.stat().st_size
    if size > MAX_GRAPH_BYTES:
        raise ProtoError(f"{size} bytes is too large for a graph")
    return path.read_bytes()


_IF_OPS = frozenset({"If", "StatelessIf"})
_CALL_OPS = frozenset({"PartitionedCall", "StatefulPartitionedCall"})
# Output argument order of multi-output ops that matter: `node:batch_mean:0` is port 1.
_OUTPUT_ARGS: dict[str, tuple[str, ...]] = {
    op: (
        "y",
        "batch_mean",
        "batch_variance",
        "reserve_space_1",
        "reserve_space_2",
        "reserve_space_3",
    )
    for op in ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
}
_MAX_INLINE_DEPTH = 8
_MAX_NODES = 2_000_000
# Inlining multiplies a function's nodes by its call sites, and every inlined name carries
# its caller's: a hostile library can ask for billions of nodes or gigabytes of names from a
# few KiB. The work allowed grows with what the file declares (real graphs inline to a few
# times their size), and a graph past it is refused as evidence, never half-read.
_MIN_INLINED_NODES = 250_000
_INLINED_NODES_PER_DECLARED = 16
_MIN_NAME_BYTES = 64 << 20
_NAME_BYTES_PER_FILE_BYTE = 16


class GraphBudgetError(ProtoError):
    """The graph asks for more work than its size justifies (a hostile or absurd graph)."""


@dataclass
class _Budget:
    nodes: int
    name_bytes: int

    def spend(self, node: GraphNode) -> None:
        self.nodes -= 1
        self.name_bytes -= len(node.name) + sum(map(len, node.inputs)) \
            + sum(map(len, node.control_inputs))
        if self.nodes < 0:
            raise GraphBudgetError("the graph's functions inline to too many nodes for its size")
        if self.name_bytes < 0:
            raise GraphBudgetError("the graph's inlined names grow too long for its size")


@dataclass(frozen=True)
class _Function:
    args: tuple[str, ...]
    outputs: tuple[str, ...]
    nodes: tuple[GraphNode, ...]
    ret: Mapping[str, str]


def _graph_from_meta(path: Path, buf: bytes) -> Graph:
    try:
        return _decode_meta(path, buf)
    except (struct.error, OverflowError, IndexError, UnicodeError) as exc:
        # Fields of the wrong wire type or size: the graph is malformed, not the decoder.
        raise ProtoError(f"malformed graph: {exc}") from exc


def _decode_meta(path: Path, buf: bytes) -> Graph:
    top: list[GraphNode] = []
    functions: dict[str, _Function] = {}
    collections: dict[str, tuple[str, ...]] = {}
    for field_no, _wire, value in iter_fields(buf):
        if not isinstance(value, bytes):
            continue
        if field_no == 2:  # graph_def
            for g_field, _w, g_value in iter_fields(value):
                if not isinstance(g_value, bytes):
                    continue
                if g_field == 1:
                    top.append(_node(g_value))
                elif g_field == 2:  # FunctionDefLibrary
                    for l_field, _lw, l_value in iter_fields(g_value):
                        if l_field == 1 and isinstance(l_value, bytes):
                            name, fn = _function(l_value)
                            functions[name] = fn
        elif field_no == 4:  # collection_def map entry
            entry = parse(value)
            key = _text(entry, 1)
            body = entry.get(2, [b""])[-1]
            if isinstance(body, bytes):
                collections[key] = _collection(key, body)
    declared = len(top) + sum(len(fn.nodes) for fn in functions.values())
    budget = _Budget(
        min(_MAX_NODES, max(_MIN_INLINED_NODES, _INLINED_NODES_PER_DECLARED * declared)),
        max(_MIN_NAME_BYTES, _NAME_BYTES_PER_FILE_BYTE * len(buf)),
    )
    nodes: dict[str, GraphNode] = {}
    _inline(top, functions, nodes, prefix="", args={}, guard=None, stack=(), budget=budget)
    return Graph(path, nodes, collections)


def _inline(
    body: tuple[GraphNode, ...] | list[GraphNode],
    functions: Mapping[str, _Function],
    out: dict[str, GraphNode],
    prefix: str,
    args: Mapping[str, str],
    guard: tuple[str, bool] | None,
    stack: tuple[str, ...],
    budget: _Budget,
) -> None:
    """Add `body` to `out` under `prefix`, function arguments replaced by the caller's inputs,
    and the bodies of functional `If` / call nodes inlined after them (control flow v2).
    `stack`: the functions being inlined; TensorFlow has no recursion, so a function that
    calls itself is not expanded again."""
    ops = {n.name: n.op for n in body}
    for node in body:
        inputs = tuple(_rename(r, prefix, args, ops) for r in node.inputs)
        controls = tuple(node_name(_rename(c, prefix, args, ops)) for c in node.control_inputs)
        name = prefix + node.name
        branches = _branches(node, functions) if len(stack) < _MAX_INLINE_DEPTH else []
        results: list[tuple[str, ...]] = []
        for label, fn_name, fn, branch_guard in branches:
            if fn_name in stack:
                continue
            sub_prefix = f"{name}/{label}/"
            passed = inputs[1:] if node.op in _IF_OPS else inputs
            sub_args = dict(zip(fn.args, passed, strict=False))
            cond = (inputs[0], branch_guard) if node.op in _IF_OPS and inputs else guard
            _inline(fn.nodes, functions, out, sub_prefix, sub_args, cond, (*stack, fn_name),
                    budget)
            sub_ops = {n.name: n.op for n in fn.nodes}
            for k, arg in enumerate(fn.outputs):
                ref = fn.ret.get(arg)
                if ref is None:
                    continue
                while len(results) <= k:
                    results.append(())
                results[k] = (*results[k], _rename(ref, sub_prefix, sub_args, sub_ops))
        inlined = GraphNode(
            name,
            node.op,
            inputs,
            controls,
            node.value,
            node.ints,
            node.flags,
            node.funcs,
            guard,
            tuple(results),
        )
        budget.spend(inlined)
        out[name] = inlined


def _branches(
    node: GraphNode, functions: Mapping[str, _Function]
) -> list[tuple[str, str, _Function, bool]]:
    if node.op in _IF_OPS:
        pairs = [
            ("then", node.funcs.get("then_branch"), True),
            ("else", node.funcs.get("else_branch"), False),
        ]
    elif node.op in _CALL_OPS:
        pairs = [("call", node.funcs.get("f"), True)]
    else:
        return []
    return [(label, f, functions[f], g) for label, f, g in pairs if f and f in functions]


def _rename(ref: str, prefix: str, args: Mapping[str, str], ops: Mapping[str, str]) -> str:
    """A function-body input (`arg`, `node:out_arg:idx`, `^node`) as a graph-wide ref."""
    control = ref.startswith("^")
    bare = ref[1:] if control else ref
    if bare in args:
        out = args[bare]
        return "^" + node_name(out) if control else out
    parts = bare.split(":")
    if prefix and len(parts) == 3 and parts[2].isdigit():
        op_args = _OUTPUT_ARGS.get(ops.get(parts[0], ""), ())
        port = (op_args.index(parts[1]) if parts[1] in op_args else 0) + int(parts[2])
        bare = f"{parts[0]}:{port}" if port else parts[0]
    elif prefix and len(parts) == 2 and not parts[1].isdigit():
        bare = parts[0]
    return ("^" if control else "") + prefix + bare


def _function(buf: bytes) -> tuple[str, _Function]:
    name = ""
    args: list[str] = []
    outputs: list[str] = []
    nodes: list[GraphNode] = []
    ret: dict[str, str] = {}
    for f, _w, v in iter_fields(buf):
        if not isinstance(v, bytes):
            continue
        if f == 1:  # OpDef signature
            sig = parse(v)
            name = _text(sig, 1)
            args = [_text(parse(a), 1) for a in sig.get(2, []) if isinstance(a, bytes)]
            outputs = [_text(parse(a), 1) for a in sig.get(3, []) if isinstance(a, bytes)]
        elif f == 3:
            nodes.append(_node(v))
        elif f == 4:
            entry = parse(v)
            ret[_text(entry, 1)] = _text(entry, 2)
    return name, _Function(tuple(args), tuple(outputs), tuple(nodes), ret)


# Ops whose attributes the analysis reads (constants' values, fused BN's `is_training`, the
# functions of control flow); every other node's attributes are skipped undecoded, which is
# most of a graph's bytes.
_ATTR_OPS = frozenset({"Const", *_OUTPUT_ARGS, "_FusedBatchNormEx", *_IF_OPS, *_CALL_OPS})


def _node(buf: bytes) -> GraphNode:
    name = op = ""
    inputs: list[str] = []
    controls: list[str] = []
    value: bool | float | None = None
    ints: tuple[int, ...] | None = None
    flags: dict[str, bool] = {}
    funcs: dict[str, str] = {}
    attrs: list[bytes] = []
    for f, _w, v in iter_fields(buf):
        if not isinstance(v, bytes):
            continue
        if f == 1:
            name = v.decode("utf-8", "replace")
        elif f == 2:
            op = v.decode("utf-8", "replace")
        elif f == 3:
            ref = v.decode("utf-8", "replace")
            (controls if ref.startswith("^") else inputs).append(ref)
        elif f == 5:
            attrs.append(v)
    for v in attrs if op in _ATTR_OPS else ():
        entry = parse(v)
        key = _text(entry, 1)
        attr_raw = entry.get(2, [b""])[-1]
        if not isinstance(attr_raw, bytes):
            continue
        attr = parse(attr_raw)
        if 5 in attr and isinstance(attr[5][-1], int):
            flags[key] = bool(attr[5][-1])
        elif 10 in attr and isinstance(attr[10][-1], bytes):
            funcs[key] = _text(parse(attr[10][-1]), 1)
        elif key == "value" and 8 in attr and isinstance(attr[8][-1], bytes):
            value = _scalar(attr[8][-1])
            ints = _small_ints(attr[8][-1])
    if not name:
        raise ProtoError("graph node without a name")
    return GraphNode(name, op, tuple(inputs), tuple(c[1:] for c in controls), value, ints,
                     flags, funcs)


def _scalar(tensor_buf: bytes) -> bool | float | None:
    """First element of a bool / float / double TensorProto, else None."""
    msg = parse(tensor_buf)
    dtype = msg.get(1, [0])[-1]
    content = msg.get(4, [b""])[-1]
    if dtype == _DT_BOOL:
        vals = msg.get(11, [])
        if vals:
            v = vals[0]
            return bool(v[0]) if isinstance(v, bytes) and v else bool(v)
        return bool(content[0]) if isinstance(content, bytes) and content else False
    if dtype in (_DT_FLOAT, _DT_DOUBLE):
        fmt, fno, size = ("<f", 5, 4) if dtype == _DT_FLOAT else ("<d", 6, 8)
        vals = msg.get(fno, [])
        if vals:
            v = vals[0]
            if isinstance(v, bytes):  # packed
                return struct.unpack_from(fmt, v)[0] if len(v) >= size else None
            if v >> (8 * size):  # a varint or fixed64 where a float belongs: malformed
                return None
            raw = struct.pack("<I" if size == 4 else "<Q", v)
            return float(struct.unpack(fmt, raw)[0])
        if isinstance(content, bytes) and len(content) >= size:
            return float(struct.unpack_from(fmt, content)[0])
        return 0.0
    return None


_DT_INT32, _DT_INT64 = 3, 9
_MAX_INTS = 16


def _small_ints(tensor_buf: bytes) -> tuple[int, ...] | None:
    """The values of an int32 / int64 TensorProto of at most 16 elements (axes), else None."""
    msg = parse(tensor_buf)
    dtype = msg.get(1, [0])[-1]
    if dtype not in (_DT_INT32, _DT_INT64):
        return None
    content = msg.get(4, [b""])[-1]
    if isinstance(content, bytes) and content:
        size = 4 if dtype == _DT_INT32 else 8
        if len(content) % size or len(content) > size * _MAX_INTS:
            return None
        fmt = f"<{len(content) // size}{'i' if size == 4 else 'q'}"
        return tuple(struct.unpack(fmt, content))
    out: list[int] = []
    for v in msg.get(7 if dtype == _DT_INT32 else 10, []):
        if isinstance(v, bytes):  # packed varints
            out.extend(_packed(v))
        elif isinstance(v, int):
            out.append(v - (1 << 64) if v >= 1 << 63 else v)
        if len(out) > _MAX_INTS:
            return None
    return tuple(out)


def _packed(buf: bytes) -> list[int]:
    """Packed varints, as signed 64-bit integers."""
    out, shift, acc = [], 0, 0
    for byte in buf[: 10 * _MAX_INTS]:
        acc |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            out.append(acc - (1 << 64) if acc >= 1 << 63 else acc)
            acc, shift = 0, 0
    return out


def _collection(key: str, buf: bytes) -> tuple[str, ...]:
    """node_list values as node names; bytes_list of VariableDefs as the variables' op names."""
    out: list[str] = []
    for f, _w, v in iter_fields(buf):
        if not isinstance(v, bytes):
            continue
        if f == 1:  # NodeList
            out.extend(
                node_name(x.decode("utf-8", "replace"))
                for x in parse(v).get(1, [])
                if isinstance(x, bytes)
            )
        elif f == 2 and key.endswith("variables"):  # BytesList of VariableDef
            for item in parse(v).get(1, []):
                if isinstance(item, bytes):
                    var_name = _text(parse(item), 1)
                    if var_name:
                        out.append(node_name(var_name))
    return tuple(out)


def _text(msg: dict[int, list[int | bytes]], field_no: int) -> str:
    values = msg.get(field_no)
    v = values[-1] if values else b""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else ""
