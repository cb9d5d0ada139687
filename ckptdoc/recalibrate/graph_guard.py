"""What a TF1 graph from a file may run: the ops a `session.run` would execute are checked
before it runs, and anything but computation is refused. Knows TensorFlow's op registry and
graph structure; must not know the CLI, targets or data.

A `.meta` is as untrusted as the checkpoint beside it: its SaverDef names a restore op, its
variables name initializer ops, and any op may carry control dependencies. ckptdoc never runs
the file's own save / restore ops (it restores with a Saver it builds), and every run goes
through `check`: the ops the run would execute (walked back from the fetches through data
and control inputs, stopping at fed tensors, into every function a call or control-flow op
names) must be computation. Stateful ops are refused except variables, their reads and
assigns, random numbers, control flow and asserts; stateless ops that touch files
(`ReadFile`, `MatchingFiles`, `ImmutableConst`...) are refused too. `--allow-unsafe-code`
turns the check off.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ckptdoc.recalibrate.errors import RecalibrationError

#: Stateful ops that only compute: variables and their reads / writes, randomness, control
#: flow (their bodies are checked too), asserts.
SAFE_STATEFUL = frozenset({
    "VariableV2", "Variable", "VarHandleOp", "ReadVariableOp", "Assign", "AssignAdd",
    "AssignSub", "AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp",
    "IsVariableInitialized", "VarIsInitializedOp", "ResourceGather", "Placeholder",
    "PlaceholderWithDefault", "RandomUniform", "RandomUniformInt", "RandomStandardNormal",
    "TruncatedNormal", "RandomShuffle", "Multinomial", "RandomGamma", "RandomPoisson",
    "RandomPoissonV2", "If", "While", "Case", "PartitionedCall", "StatefulPartitionedCall",
    "Assert", "NoOp", "Enter", "Exit", "NextIteration", "LoopCond", "Switch", "Merge",
    "RefSwitch", "RefMerge", "RefEnter", "RefExit", "RefNextIteration", "ControlTrigger",
    "StackV2", "StackPushV2", "StackPopV2", "StackCloseV2", "TensorArrayV3",
    "TensorArrayReadV3", "TensorArrayWriteV3", "TensorArrayGatherV3", "TensorArrayScatterV3",
    "TensorArraySizeV3", "TensorArrayCloseV3", "TensorArrayConcatV3", "TensorArraySplitV3",
    "TensorArrayGradV3", "DestroyTemporaryVariable", "TemporaryVariable",
})
#: Stateless by TensorFlow's registry, yet they read the file system.
FILE_OPS = frozenset({"ReadFile", "MatchingFiles", "ImmutableConst", "LoadAndRemapMatrix",
                      "DecodeProtoV2", "EncodeProto"})
_MAX_FUNCTIONS = 10_000


def check(graph: Any, fetches: Iterable[Any], fed: Iterable[Any] = (),
          trusted: frozenset[str] = frozenset(), what: str = "the graph") -> None:
    """Refuse (RecalibrationError) a run of `fetches` (tensors or ops) whose executed ops are
    not all computation. `fed`: tensors fed (their producers do not run); `trusted`: names of
    ops ckptdoc built itself (not checked, their inputs are)."""
    bad = unsafe_ops(graph, fetches, fed, trusted)
    if bad:
        listed = ", ".join(f"`{name}` ({op_type})" for name, op_type in bad[:8])
        more = f" and {len(bad) - 8} more" if len(bad) > 8 else ""
        raise RecalibrationError(
            f"{what} would run ops that are not computation: {listed}{more}. A graph file is "
            "untrusted: ckptdoc runs only pure compute ops from it (file, process, network, "
            "Python-function, save / restore, queue and iterator ops are refused). Pass "
            "--allow-unsafe-code only if you trust this graph"
        )


def unsafe_ops(graph: Any, fetches: Iterable[Any], fed: Iterable[Any] = (),
               trusted: frozenset[str] = frozenset()) -> list[tuple[str, str]]:
    """(name, type) of every op a run of `fetches` would execute that is not computation,
    including ops inside the functions they call."""
    fed_names = {t.name for t in fed}
    seen: set[str] = set()
    bad: list[tuple[str, str]] = []
    functions: set[str] = set()
    stack: list[Any] = []
    for item in fetches:
        if hasattr(item, "op") and hasattr(item, "value_index"):  # a tensor
            if item.name not in fed_names:
                stack.append(item.op)
        else:
            stack.append(item)
    while stack:
        op = stack.pop()
        if op.name in seen:
            continue
        seen.add(op.name)
        if op.name not in trusted and not _computes(op.type):
            bad.append((op.name, op.type))
        functions.update(_called(op.node_def))
        if _registered(op.type) is None:  # a call to a library function: its name is the type
            functions.add(op.type)
        stack.extend(t.op for t in op.inputs if t.name not in fed_names)
        stack.extend(op.control_inputs)
    bad.extend(_unsafe_in_functions(graph, functions))
    return bad


def _unsafe_in_functions(graph: Any, names: set[str]) -> list[tuple[str, str]]:
    """Every node of every function reachable from `names` (a body may run in full). The
    library is serialized only when some function is called."""
    if not names:
        return []
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    bad: list[tuple[str, str]] = []
    todo, done = list(names), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        if len(done) > _MAX_FUNCTIONS:
            bad.append((name, "too many functions to check"))
            break
        fdef = library.get(name)
        if fdef is None:
            continue  # a registered (built-in) function, not the file's
        for node in fdef.node_def:
            if not _computes(node.op):
                bad.append((f"{name}/{node.name}", node.op))
            todo.extend(_called(node))
            if _registered(node.op) is None:
                todo.append(node.op)
    return bad


def _called(node_def: Any) -> set[str]:
    """Names of the functions a NodeDef's attributes name (If branches, call targets...)."""
    out: set[str] = set()
    for value in node_def.attr.values():
        if value.HasField("func"):
            out.add(value.func.name)
        elif value.HasField("list"):
            out.update(f.name for f in value.list.func)
    return out


def _computes(op_type: str) -> bool:
    if op_type in FILE_OPS:
        return False
    if op_type in SAFE_STATEFUL:
        return True
    op_def = _registered(op_type)
    # A function name used as an op type (a call to a library function) is checked through
    # the function; an unknown op would not have imported.
    return op_def is None or not op_def.is_stateful


def _registered(op_type: str) -> Any:
    """TensorFlow's OpDef of `op_type`, or None for a library function's name."""
    from tensorflow.python.framework import op_def_registry

    return op_def_registry.get(op_type)
