"""Recalibrate a TF1 graph checkpoint: import its `.meta` (or rebuild the graph), restore it,
and measure the exact input statistics of every BN layer in float64.

Where a BN layer's input is, found in the graph itself (no naming guesses):
- fused batch norm ops (`FusedBatchNorm`, `V2`, `V3`) whose scale / offset / mean / variance
  read the layer's variables: the input is `op.inputs[0]`. TF2-era graphs put them inside the
  branch functions of `If` / `StatelessIf` ops (control flow v2): the branch argument is mapped
  back to the `If` op's input in the main graph;
- `tf.nn.moments` patterns (`Mean(x)` and `SquaredDifference(x, StopGradient(mean))`, or
  `Square(x - mean)`), as non-fused `tf.layers`, contrib / slim and hand-made graphs build
  them; the layer they belong to is the nearest BN variable downstream of the moments (the
  moving-average update ops or the `cond` that picks batch vs moving statistics).

The pass runs the graph with the user's feeds and `--set` values; a boolean placeholder that
clearly is the training switch is set to True during the pass (BN layers normalize with batch
statistics, precise mode) and False for the held-out evaluation. Fetching the BN inputs does
not run `UPDATE_OPS` (they are not dependencies of those tensors), and the session's values are
never saved: the output is written by patching the input bundle's bytes.

The variance is written as the population variance of the layer's input over all samples: the
quantity inference divides by. (TF1's fused training op feeds the moving average the unbiased
n/(n-1) batch variance; over a whole dataset the difference is below 1/n.)

TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ckptdoc.formats.resolve import tf_prefix
from ckptdoc.groups import BNGroup
from ckptdoc.recalibrate import graph_guard
from ckptdoc.recalibrate.data import Batch
from ckptdoc.recalibrate.errors import RecalibrationError
from ckptdoc.recalibrate.evaluate import score
from ckptdoc.recalibrate.report import EvalResult
from ckptdoc.recalibrate.stats import Moments

VARIANCE_CONVENTION = (
    "population (biased) variance of the layer input over all samples, what TF1 batch norm "
    "divides by at inference"
)
_FUSED = ("FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3")
_IF = ("If", "StatelessIf")
_PASS_THROUGH = (
    "Identity",
    "Snapshot",
    "StopGradient",
    "ReadVariableOp",
    "Cast",
    "Enter",
    "RefEnter",
    "Switch",
    "RefSwitch",
    "RefIdentity",
)
_VARIABLE_OPS = ("VarHandleOp", "VariableV2", "Variable", "VarHandle")
_TRAINING_NAME = re.compile(
    r"(?i)^(is_?)?(train|training)(_?(mode|phase|flag))?$|^(phase|mode)(_?train)?$"
)
_LOSS_OPS = ("SparseSoftmaxCrossEntropyWithLogits", "SoftmaxCrossEntropyWithLogits")


@dataclass
class Site:
    """Where one BN layer's input is computed: a main-graph tensor and its channel axes."""

    x: Any  # tf.Tensor in the main graph
    kept: tuple[int, ...]  # channel axes (kept), as Moments.from_batch wants them
    variables: list[str]  # variable op names reached, nearest first
    kind: str  # "fused-train", "fused-inference", "moments"


# --- graph walking -----------------------------------------------------------------------------


def _unwrap(t: Any) -> Any:
    """Follow value-preserving ops back (Identity, Switch data input, reads, casts)."""
    seen = 0
    while t.op.type in _PASS_THROUGH and t.op.inputs and seen < 50:
        t = t.op.inputs[0]
        seen += 1
    return t


def _variable_of(t: Any) -> str | None:
    t = _unwrap(t)
    return t.op.name if t.op.type in _VARIABLE_OPS else None


def _fused_kept(data_format: bytes | str, rank: int | None) -> tuple[int, ...]:
    fmt = data_format.decode() if isinstance(data_format, bytes) else str(data_format)
    if fmt.startswith("NC"):
        return (1,)
    return ((rank or 4) - 1,)


class _Body:
    """A branch FunctionDef of an If op: resolves node references back to the op's inputs."""

    def __init__(self, fdef: Any, outer_inputs: Sequence[Any]) -> None:
        self.fdef = fdef
        self.args = {a.name: i for i, a in enumerate(fdef.signature.input_arg)}
        self.nodes = {n.name: n for n in fdef.node_def}
        self.outer = list(outer_inputs)

    def resolve(self, ref: str) -> Any | None:
        """Main-graph tensor that `ref` (a body input string) carries, through Identity /
        ReadVariableOp chains; None when it is computed inside the body."""
        for _ in range(50):
            name = ref.split(":")[0].lstrip("^")
            if name in self.args:
                idx = self.args[name]
                return self.outer[idx] if idx < len(self.outer) else None
            node = self.nodes.get(name)
            if node is None or node.op not in _PASS_THROUGH or not node.input:
                return None
            ref = node.input[0]
        return None


def _fused_sites(graph: Any, library: Mapping[str, Any]) -> list[Site]:
    sites: list[Site] = []
    for op in graph.get_operations():
        if op.type in _FUSED:
            x = _unwrap(op.inputs[0])
            names = [n for n in (_variable_of(t) for t in list(op.inputs)[1:5]) if n]
            kept = _fused_kept(op.get_attr("data_format"), x.shape.rank)
            kind = "fused-train" if op.get_attr("is_training") else "fused-inference"
            sites.append(Site(x, kept, names, kind))
        elif op.type in _IF:
            outer = list(op.inputs)[1:]
            for attr in ("then_branch", "else_branch"):
                fdef = library.get(op.get_attr(attr).name)
                if fdef is None:
                    continue
                body = _Body(fdef, outer)
                for node in fdef.node_def:
                    if node.op not in _FUSED:
                        continue
                    x = body.resolve(node.input[0])
                    if x is None:
                        continue
                    x = _unwrap(x)
                    names = []
                    for ref in list(node.input)[1:5]:
                        t = body.resolve(ref)
                        name = _variable_of(t) if t is not None else None
                        if name:
                            names.append(name)
                    fmt = node.attr["data_format"].s if "data_format" in node.attr else b"NHWC"
                    train = bool(node.attr["is_training"].b) if "is_training" in node.attr else True
                    kind = "fused-train" if train else "fused-inference"
                    sites.append(Site(x, _fused_kept(fmt, x.shape.rank), names, kind))
    return sites


def _mean_of(t: Any) -> Any | None:
    t = _unwrap(t)
    return t.op if t.op.type == "Mean" else None


def _moments_sites(graph: Any) -> list[Site]:
    from tensorflow.python.framework import tensor_util

    found: dict[str, tuple[Any, Any, list[Any]]] = {}  # mean op name -> (x, mean op, outputs)
    for op in graph.get_operations():
        pairs: list[tuple[Any, Any]] = []
        if op.type == "SquaredDifference":
            a, b = op.inputs
            pairs = [(a, b), (b, a)]
        elif op.type == "Square" and _unwrap(op.inputs[0]).op.type == "Sub":
            a, b = _unwrap(op.inputs[0]).op.inputs
            pairs = [(a, b)]
        for x, m in pairs:
            mean_op = _mean_of(m)
            if mean_op is None or _unwrap(mean_op.inputs[0]) is not _unwrap(x):
                continue
            outs = [mean_op.outputs[0]] + [
                c.outputs[0] for c in op.outputs[0].consumers() if c.type == "Mean"
            ]
            found[mean_op.name] = (_unwrap(x), mean_op, outs)
            break
    sites: list[Site] = []
    for x, mean_op, outs in found.values():
        rank = x.shape.rank
        axes = tensor_util.constant_value(mean_op.inputs[1])
        if rank is None or axes is None:
            continue
        reduced = {int(a) % rank for a in np.atleast_1d(axes)}
        kept = tuple(a for a in range(rank) if a not in reduced)
        sites.append(Site(x, kept, _variables_downstream(outs), "moments"))
    return sites


def _variables_downstream(tensors: Iterable[Any], depth: int = 6) -> list[str]:
    """Variables read or written by ops near (downstream of) `tensors`, nearest first."""
    names: list[str] = []
    frontier = [t.op for t in tensors]
    seen = {op.name for op in frontier}
    for _ in range(depth):
        nxt = []
        for op in frontier:
            for t in op.outputs:
                for c in t.consumers():
                    if c.name in seen:
                        continue
                    seen.add(c.name)
                    nxt.append(c)
                    for inp in c.inputs:
                        n = _variable_of(inp)
                        if n and n not in names:
                            names.append(n)
        frontier = nxt
    return names


def _sites_from_refs(graph: Any, refs: Sequence[str]) -> list[Site]:
    """Sites for main-graph tensors the graph analysis found (channels last)."""
    sites = []
    for ref in refs:
        try:
            t = graph.get_tensor_by_name(ref if ":" in ref else ref + ":0")
        except (KeyError, ValueError):
            continue
        rank = t.shape.rank
        if rank:
            sites.append(Site(t, (rank - 1,), [], "graph"))
    return sites


def find_sites(graph: Any) -> list[Site]:
    library = {f.signature.name: f for f in graph.as_graph_def().library.function}
    return _fused_sites(graph, library) + _moments_sites(graph)


def match_groups(groups: Sequence[BNGroup], sites: Sequence[Site]) -> dict[str, list[Site]]:
    """BN group name -> its sites (distinct input tensors, training-mode ops preferred)."""
    owner: dict[str, str] = {}
    for g in groups:
        for role in ("moving_mean", "moving_variance", "gamma", "beta"):
            key = g.key(role)
            if key:
                owner[key] = g.name
    out: dict[str, list[Site]] = {}
    for site in sites:
        group = next((owner[n] for n in site.variables if n in owner), None)
        if group is None:
            continue
        same = [s for s in out.get(group, []) if s.x is site.x]
        if same:
            if site.kind == "fused-train" and same[0].kind != "fused-train":
                out[group][out[group].index(same[0])] = site
            continue
        out.setdefault(group, []).append(site)
    return out


# --- placeholders ------------------------------------------------------------------------------


def _iterator_hint(graph: Any) -> str:
    """A graph fed by `tf.data` has no placeholders: its inputs are the outputs of its
    `IteratorGetNext` ops, which TensorFlow lets a run feed like placeholders."""
    outputs = [t for op in graph.get_operations()
               if op.type in ("IteratorGetNext", "IteratorGetNextSync") for t in op.outputs]
    if not outputs:
        return ""
    example = " ".join(f"--feed {t.name}={'x' if i == 0 else 'y'}"
                       for i, t in enumerate(outputs[:2]))
    return (f". The graph reads its data from a tf.data iterator ("
            f"{', '.join(t.name for t in outputs[:6])}): feed those instead, e.g. {example} "
            "(each --feed names the .npz key that feeds it)")


def _placeholders(graph: Any) -> list[Any]:
    return [
        op for op in graph.get_operations() if op.type in ("Placeholder", "PlaceholderWithDefault")
    ]


def training_switches(graph: Any) -> list[Any]:
    """Boolean placeholders whose name says they are the training switch."""
    import tensorflow as tf

    out = []
    for op in _placeholders(graph):
        if op.outputs[0].dtype != tf.bool:
            continue
        if _TRAINING_NAME.match(op.name.split("/")[-1]):
            out.append(op.outputs[0])
    return out


def boolean_placeholders_hint(gm: GraphModel) -> str:
    """`; boolean placeholders: a:0, b:0` (those not already set), for a message."""
    import tensorflow as tf

    names = [op.outputs[0].name for op in _placeholders(gm.graph)
             if op.outputs[0].dtype == tf.bool and op.outputs[0] not in gm.sets
             and op.outputs[0] not in gm.switches]
    return f" (boolean placeholders: {', '.join(names)})" if names else ""


def parse_value(text: str, dtype: Any) -> np.ndarray:
    """A `--set` value for a placeholder of `dtype`."""
    low = text.strip().lower()
    if dtype.is_bool:
        if low in ("true", "1", "yes", "on"):
            return np.asarray(True)
        if low in ("false", "0", "no", "off"):
            return np.asarray(False)
        raise RecalibrationError(f"--set: {text!r} is not a boolean (use true or false)")
    if dtype == "string":
        return np.asarray(text.encode())
    try:
        return np.asarray(
            float(text) if dtype.is_floating else int(text), dtype=dtype.as_numpy_dtype
        )
    except ValueError as exc:
        raise RecalibrationError(f"--set: {text!r} is not a valid {dtype.name}") from exc


def _tensor(graph: Any, name: str, what: str) -> Any:
    ref = name if ":" in name else name + ":0"
    try:
        return graph.get_tensor_by_name(ref)
    except (KeyError, ValueError) as exc:
        places = ", ".join(op.name + ":0" for op in _placeholders(graph)) or "none"
        raise RecalibrationError(
            f"{what} {name}: no such tensor in the graph (placeholders: {places})"
        ) from exc


def find_predictions(graph: Any) -> Any | None:
    """The logits the graph's loss (or its single softmax / sigmoid) reads, when unambiguous."""
    forward = [op for op in graph.get_operations() if not op.name.startswith("gradients")]
    for types in (_LOSS_OPS, ("LogSoftmax",), ("Softmax",), ("Sigmoid",)):
        ops = [op for op in forward if op.type in types]
        if len(ops) == 1:
            return _unwrap(ops[0].inputs[0])
        if ops:
            return None
    return None


# --- the session -------------------------------------------------------------------------------


@dataclass
class GraphModel:
    """A TF1 graph, its session with the checkpoint restored, and how to feed it."""

    graph: Any
    session: Any
    #: placeholder tensor -> data key (two placeholders may take the same key)
    feeds: dict[Any, str]
    sets: dict[Any, np.ndarray]  # placeholder tensor -> fixed value (calibration pass)
    switches: list[Any]  # training switches: True for the pass, False for evaluation
    predictions: Any | None
    notes: list[str] = field(default_factory=list)
    #: --allow-unsafe-code: run whatever the graph asks, unchecked.
    allow_unsafe: bool = False
    #: Ops ckptdoc built itself (assigns), and the fetch sets already checked.
    trusted: frozenset[str] = frozenset()
    _checked: set[tuple[str, ...]] = field(default_factory=set)
    _assigners: dict[str, tuple[Any, Any]] = field(default_factory=dict)
    _readers: dict[str, Any] = field(default_factory=dict)

    def close(self) -> None:
        self.session.close()

    def assigner(self, var: Any) -> tuple[Any, Any]:
        """An assign op of our own for `var` and the placeholder it takes (made once)."""
        name = var.op.name
        if name not in self._assigners:
            import tensorflow as tf

            v1 = tf.compat.v1
            with built_here(self.graph) as built, self.graph.as_default():
                ph = v1.placeholder(var.dtype.base_dtype, var.shape)
                op = var.assign(ph, read_value=False)  # the assign Operation itself
            self.trusted = self.trusted | built
            self._assigners[name] = (op, ph)
        return self._assigners[name]

    def reader(self, var: Any) -> Any:
        """A tensor reading `var`'s value (made once, in this graph)."""
        name = var.op.name
        if name not in self._readers:
            with self.graph.as_default():
                self._readers[name] = var.value()
        return self._readers[name]

    def run(self, fetches: Any, feed_dict: Mapping[Any, Any] | None = None) -> Any:
        """`session.run`, after `graph_guard.check` on the ops it would execute (each set of
        fetches and feeds once)."""
        feed_dict = dict(feed_dict or {})
        if not self.allow_unsafe:
            items = fetches if isinstance(fetches, list | tuple) else [fetches]
            key = tuple(sorted(getattr(f, "name", str(f)) for f in items)) + ("|",) + tuple(
                sorted(getattr(t, "name", str(t)) for t in feed_dict))
            if key not in self._checked:
                graph_guard.check(self.graph, items, feed_dict, self.trusted)
                self._checked.add(key)
        return self.session.run(fetches, feed_dict)

    def feed_dict(self, batch: Batch, training: bool) -> dict[Any, Any]:
        fd: dict[Any, Any] = {}
        x = batch.x
        if isinstance(x, Mapping):
            for ph, key in self.feeds.items():
                if key not in x:
                    raise RecalibrationError(
                        f"--feed {ph.name}={key}: the data has no {key!r} (it has: "
                        f"{', '.join(map(str, x))})"
                    )
                fd[ph] = np.asarray(x[key])
        else:
            if len(self.feeds) != 1:
                raise RecalibrationError(
                    "the data yields plain arrays but several --feed placeholders are given; "
                    "use .npz keys or dict batches"
                )
            fd[next(iter(self.feeds))] = np.asarray(x)
        for ph, value in self.sets.items():
            fd[ph] = value
        for ph in self.switches:
            fd[ph] = np.asarray(training)
        return fd


def _without_shape_hints(meta: Path) -> Any:
    """The MetaGraphDef of `meta` without its `_output_shapes` attributes. They are hints the
    writer recorded, and TF 1.x wrote some that today's importer rejects as inconsistent (a
    real TF 1.x musicnn graph: `FusedBatchNormGrad` output shapes [0] vs [128]); TensorFlow
    infers the shapes again on import."""
    import tensorflow as tf

    proto = tf.compat.v1.MetaGraphDef()
    proto.ParseFromString(meta.read_bytes())
    for node in proto.graph_def.node:
        node.attr.pop("_output_shapes", None)
    for function in proto.graph_def.library.function:
        for node in function.node_def:
            node.attr.pop("_output_shapes", None)
    return proto


def open_graph(
    prefix: Path,
    *,
    meta: Path | None,
    model_spec: str | None,
    feeds: Mapping[str, str],
    sets: Mapping[str, str],
    predictions: str | None,
    allow_unsafe: bool = False,
) -> GraphModel:
    """Import the graph (`.meta` or `--model`), restore `prefix`, resolve feeds and switches.
    Every op a run executes is checked first (`graph_guard`) unless `allow_unsafe`."""
    import tensorflow as tf

    from ckptdoc.recalibrate.data import load_callable

    v1 = tf.compat.v1
    graph = tf.Graph()
    notes: list[str] = []
    built_predictions = None
    with graph.as_default():
        if model_spec is not None:
            fn = load_callable(model_spec, "--model")
            try:
                result = fn()
            except Exception as exc:
                raise RecalibrationError(
                    f"--model {model_spec}: the function raised {type(exc).__name__}: {exc}"
                ) from exc
            if isinstance(result, tf.Tensor):
                built_predictions = result
            elif isinstance(result, Mapping) and isinstance(result.get("predictions"), tf.Tensor):
                built_predictions = result["predictions"]
        elif meta is not None:
            try:
                # The SaverDef's save / restore ops are the file's choice: never used.
                v1.train.import_meta_graph(_without_shape_hints(meta), clear_devices=True)
            except Exception as exc:
                raise RecalibrationError(
                    f"{meta}: TensorFlow could not import the meta graph: "
                    f"{type(exc).__name__}: {exc}"
                ) from exc
        else:
            raise RecalibrationError(
                f"{prefix}: a TF1 checkpoint without a .meta graph needs --model module:function "
                "that rebuilds the graph"
            )
        session = v1.Session(graph=graph)
        try:
            trusted = _restore(v1, graph, session, prefix, allow_unsafe)
        except RecalibrationError:
            session.close()
            raise
        except Exception as exc:
            session.close()
            raise RecalibrationError(
                f"{prefix}: restoring into the graph failed: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0]}"
            ) from exc
    switches_found = training_switches(graph)
    set_tensors: dict[Any, np.ndarray] = {}
    switches: list[Any] = []
    for name, text in sets.items():
        ph = _tensor(graph, name, "--set")
        value = parse_value(text, ph.dtype)
        if ph.dtype == tf.bool and bool(value):
            # A boolean set True is the training switch, whatever its name: True for the
            # pass, False for the held-out check (else that check would see batch statistics).
            switches.append(ph)
        else:
            set_tensors[ph] = value
    user_set = {_tensor(graph, n, "--set") for n in sets}
    for ph in switches_found:
        if ph not in user_set:
            switches.append(ph)
            notes.append(
                f"{ph.name} looks like the training switch: fed True during calibration (BN "
                "layers use batch statistics) and False for evaluation; override with --set"
            )
    for ph in switches:
        if ph in user_set:
            notes.append(
                f"{ph.name} (set true) is the training switch: True during calibration, False "
                "for evaluation"
            )
    feed_tensors: dict[Any, str] = {}
    for name, key in feeds.items():
        feed_tensors[_tensor(graph, name, "--feed")] = key
    if not feed_tensors:
        inputs = [
            op.outputs[0]
            for op in _placeholders(graph)
            if op.type == "Placeholder"
            and op.outputs[0].dtype.is_floating
            and not op.name.startswith("save/")
        ]
        if len(inputs) != 1:
            raise RecalibrationError(
                "give --feed PLACEHOLDER=KEY for the graph's inputs (float placeholders: "
                f"{', '.join(t.name for t in inputs) or 'none'})" + _iterator_hint(graph)
            )
        feed_tensors[inputs[0]] = "x"
        notes.append(
            f"no --feed given: the data's inputs are fed to {inputs[0].name}, the "
            "graph's only float placeholder"
        )
    pred = (
        _tensor(graph, predictions, "--predictions")
        if predictions
        else built_predictions
        if built_predictions is not None
        else find_predictions(graph)
    )
    if pred is not None and predictions is None:
        notes.append(f"held-out evaluation reads {pred.name} (the logits of the graph's loss)")
    return GraphModel(graph, session, feed_tensors, set_tensors, switches, pred, notes,
                      allow_unsafe, trusted)


@contextlib.contextmanager
def built_here(graph: Any) -> Iterator[set[str]]:
    """The names of the ops added to `graph` inside the block: ops ckptdoc built itself,
    which `graph_guard` trusts (their inputs are still checked)."""
    before = {op.name for op in graph.get_operations()}
    built: set[str] = set()
    yield built
    built.update(op.name for op in graph.get_operations() if op.name not in before)


def _restore(v1: Any, graph: Any, session: Any, prefix: Path, allow_unsafe: bool) -> frozenset[str]:
    """Restore the checkpoint's variables with a Saver built here from the bundle's own
    variable list (never the file's SaverDef), after checking every op the restore runs.
    Variables the checkpoint lacks (a trainable-only Saver dropped the moving statistics)
    start at their initializers, as in training: 0 / 1. Returns the ops built here."""
    keys = v1.train.NewCheckpointReader(tf_prefix(prefix)).get_variable_to_shape_map()
    variables = v1.global_variables()
    present = {v.op.name: v for v in variables if v.op.name in keys}
    if not present:
        raise RecalibrationError(
            f"{prefix}: none of the graph's variables is in the checkpoint (graph: "
            f"{', '.join(v.op.name for v in variables[:5]) or 'no variables'}): is this the "
            "graph of this checkpoint?")
    with built_here(graph) as built:
        saver = v1.train.Saver(var_list=present)
    absent = [v for v in variables if v.op.name not in keys]
    trusted = frozenset(built)
    if not allow_unsafe:
        graph_guard.check(graph, [graph.get_operation_by_name(saver.saver_def.restore_op_name)],
                          [graph.get_tensor_by_name(saver.saver_def.filename_tensor_name)],
                          trusted, "restoring the checkpoint into its graph")
        graph_guard.check(graph, [v.initializer for v in absent], (), trusted,
                          "initializing the variables the checkpoint lacks")
    saver.restore(session, tf_prefix(prefix))
    if absent:
        session.run([v.initializer for v in absent])
    return trusted


# --- the pass ----------------------------------------------------------------------------------


@dataclass
class LayerPlan:
    group: BNGroup
    sites: list[Site]
    variables: dict[str, Any]  # role -> tf.Variable (moving_mean / moving_variance), may be empty


def plan_layers(
    gm: GraphModel,
    groups: Sequence[BNGroup],
    expected: Mapping[str, Mapping[str, str]] | None = None,
    inputs: Mapping[str, Sequence[str]] | None = None,
) -> tuple[list[LayerPlan], list[str]]:
    """Match each BN group of the checkpoint to its input in the graph. `expected`: group name
    -> role -> the graph's variable name, for statistics the checkpoint lacks (a trainable-only
    Saver): they are measured and added. `inputs`: group name -> the tensors the audit's graph
    analysis found it normalizing, used where the patterns here find nothing (moments inside
    a `cond` branch, hand-written layers)."""
    import tensorflow as tf

    sites = find_sites(gm.graph)
    by_group = match_groups(groups, sites)
    with gm.graph.as_default():
        variables = {v.op.name: v for v in tf.compat.v1.global_variables()}
    plans: list[LayerPlan] = []
    problems: list[str] = []
    for g in groups:
        names = {r: g.key(r) or (expected or {}).get(g.name, {}).get(r)
                 for r in ("moving_mean", "moving_variance")}
        if not names["moving_mean"] or not names["moving_variance"]:
            problems.append(
                f"{g.name}: the checkpoint has no moving statistics and no graph (`.meta`) "
                "names them: give the graph that trained it, so they can be added"
            )
            continue
        found = by_group.get(g.name) or _sites_from_refs(gm.graph, (inputs or {}).get(g.name, ()))
        if not found:
            problems.append(f"{g.name}: no batch-norm computation reads it in the graph")
            continue
        roles = {r: variables[n] for r, n in names.items() if n in variables}
        plans.append(LayerPlan(g, found, roles))
    return plans, problems


def unfed_placeholders(gm: GraphModel, plans: Sequence[LayerPlan]) -> list[str]:
    """Problems with the placeholders the pass needs but nothing feeds (no default, not given
    by --feed / --set, not a training switch): found before the pass, not as TensorFlow's
    "You must feed a value" in the middle of it. A boolean one is most likely the training
    switch under a name no convention knows."""
    import tensorflow as tf

    given = {t.op for t in [*gm.feeds, *gm.sets, *gm.switches]}
    stack = [s.x.op for p in plans for s in p.sites]
    seen: set[Any] = set()
    problems = []
    while stack:
        op = stack.pop()
        if op in seen:
            continue
        seen.add(op)
        if op.type == "Placeholder" and op not in given:
            t = op.outputs[0]
            problems.append(
                f"{t.name} is a boolean placeholder the pass needs: if it is the training "
                f"switch, --set {t.name}=true (True for the pass, False for the held-out check)"
                if t.dtype == tf.bool else
                f"the pass needs a value for the placeholder {t.name} ({t.dtype.name}): give it "
                f"with --feed {t.name}=KEY or --set {t.name}=VALUE"
            )
        stack.extend(t.op for t in op.inputs)
        stack.extend(op.control_inputs)
    return sorted(problems)


def run_pass(
    gm: GraphModel,
    plans: Sequence[LayerPlan],
    batches: Iterable[Batch],
    on_batch: Callable[[int], None] | None = None,
    training: bool = True,
) -> dict[str, Moments]:
    """One walk over the data: exact per-channel moments of every BN input, merged in float64.
    `training` is what the training switches are fed."""
    fetch: list[Any] = []
    index: dict[int, int] = {}
    for p in plans:
        for s in p.sites:
            if id(s.x) not in index:
                index[id(s.x)] = len(fetch)
                fetch.append(s.x)
    moments: dict[str, Moments] = {}
    for b in batches:
        values = gm.run(fetch, gm.feed_dict(b, training=training))
        for p in plans:
            for s in p.sites:
                part = Moments.from_batch(values[index[id(s.x)]], s.kept)
                acc = moments.get(p.group.name)
                if acc is None:
                    moments[p.group.name] = part
                else:
                    acc.merge(part)
        if on_batch:
            on_batch(b.size)
    return moments


def evaluate(gm: GraphModel, batches: Iterable[Batch], source: str) -> EvalResult | None:
    """Inference-mode (training switch False) loss / accuracy over labelled batches."""
    if gm.predictions is None:
        return None
    return score(
        (
            (
                gm.run(gm.predictions, gm.feed_dict(b, training=False))
                if b.y is not None
                else None,
                b.y,
                b.size,
            )
            for b in batches
        ),
        source,
    )


def assign(gm: GraphModel, plan: LayerPlan, values: Mapping[str, np.ndarray]) -> None:
    """Put values into the session's variables (for the after-evaluation only), through assign
    ops built here: `Variable.load` would run the file's own initializer op."""
    for role, var in plan.variables.items():
        if role in values:
            op, ph = gm.assigner(var)
            value = np.asarray(values[role]).astype(var.dtype.base_dtype.as_numpy_dtype)
            gm.run(op, {ph: value.reshape(var.shape.as_list())})


def stats_moved(gm: GraphModel, plan: LayerPlan, ck: Any) -> bool:
    """Whether the session's moving statistics differ from the checkpoint's after the pass."""
    for role, var in plan.variables.items():
        key = plan.group.key(role)
        if key is None:
            continue
        now = np.asarray(gm.run(gm.reader(var)))
        if not np.array_equal(now, np.asarray(ck.read(key)).reshape(now.shape), equal_nan=True):
            return True
    return False
