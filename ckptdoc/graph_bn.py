"""Batch norm as a TensorFlow graph shows it: which variables feed a normalization, which ops
update them, and whether training runs those updates. Knows TF graph patterns, not bytes
(`formats/graph.py` decodes them) and not names (names only label what the ops prove).

A BN layer is found from its ops, whatever its variables are called:
- `FusedBatchNorm*`: inputs 1-4 are scale, offset, mean, variance;
- `tf.nn.batch_normalization`: `Rsqrt(variance + eps)`, optionally `* scale`, then
  `offset - mean * inv`;
- moving-average updates: an assign to a variable whose new value is computed from a batch
  statistic (a `FusedBatchNorm*` mean / variance output, or a `Mean` as in `tf.nn.moments`).
A layer needs a moving statistic, so layer and group norm (same ops, no moving stats) stay out.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ckptdoc.formats.graph import Graph, GraphBudgetError, GraphNode, node_name, output_index

__all__ = ["GraphFacts", "GraphLayer", "Switch", "analyze", "common_scope"]

_FUSED = frozenset({"FusedBatchNorm", "FusedBatchNormV2", "FusedBatchNormV3", "_FusedBatchNormEx"})
_VARIABLES = frozenset({"VariableV2", "Variable", "VarHandleOp"})
# Ops a value passes through unchanged, for finding which variable feeds an input.
_PASS = frozenset(
    {
        "Identity",
        "IdentityN",
        "ReadVariableOp",
        "Switch",
        "RefSwitch",
        "Merge",
        "RefMerge",
        "Enter",
        "RefEnter",
        "Cast",
        "StopGradient",
        "Snapshot",
        "RefIdentity",
        "Squeeze",
        "Reshape",
        "ExpandDims",
        "If",
        "StatelessIf",
        "PartitionedCall",
        "StatefulPartitionedCall",
    }
)
_ASSIGNS = frozenset(
    {
        "Assign",
        "AssignSub",
        "AssignVariableOp",
        "AssignSubVariableOp",
        "AssignMovingAvg",
    }
)
_APPLY_PREFIXES = ("Apply", "ResourceApply", "SparseApply", "ResourceSparseApply")
_FUSED_ROLES = {1: "gamma", 2: "beta", 3: "moving_mean", 4: "moving_variance"}
_MAX_WALK = 4096
# Every walk step the analysis takes is paid from a budget proportional to the graph (its
# nodes and edges): walks start at every BN op, assign and update, and a hostile graph can
# make each of them long (a Switch chain, an Identity with a million inputs).
_MIN_STEPS = 1_000_000
_STEPS_PER_EDGE = 32


@dataclass(frozen=True)
class Switch:
    """What decides whether a BN op runs in training mode."""

    node: str
    op: str
    #: The value when nothing feeds it: a PlaceholderWithDefault's default, a Const's value;
    #: None for a Placeholder that must be fed.
    default: bool | None

    def describe(self) -> str:
        if self.op == "PlaceholderWithDefault":
            return f"`{self.node}` (defaults to {self.default} unless fed)"
        if self.op == "Const":
            return f"`{self.node}` (a constant {self.default})"
        return f"`{self.node}` ({self.op})"


@dataclass(frozen=True)
class GraphLayer:
    """One BN layer found from ops. `members` maps roles to variable op names."""

    name: str
    members: Mapping[str, str]
    update_ops: tuple[str, ...] = ()
    switches: tuple[Switch, ...] = ()
    #: True when some BN op of this layer normalizes with batch statistics (training mode).
    has_training_mode: bool = False
    #: The moving-average momentum (decay) its update ops use, when the graph holds it.
    momentum: float | None = None
    #: The tensors it normalizes, as main-graph refs (`conv1/Conv2D`): what recalibration
    #: measures. Inside an inlined `If` branch, the branch argument's outer input.
    inputs: tuple[str, ...] = ()
    #: Variables the update ops write that no normalizing op reads: moving-average state
    #: (zero-debias `biased` accumulators), not the layer's statistics.
    state: tuple[str, ...] = ()
    #: True when the layer normalizes only with the batch's own statistics (moments over the
    #: batch axis) and has no moving statistics at all: inference cannot reproduce training.
    batch_stats_only: bool = False


@dataclass(frozen=True)
class GraphFacts:
    layers: tuple[GraphLayer, ...]
    #: Ops that run a training step (the `train_op` collection, else the last ops downstream of
    #: the optimizer's apply ops). Empty: the graph cannot train (an inference or eval graph).
    train_ops: tuple[str, ...]
    update_collection: tuple[str, ...]
    #: Update ops no train op depends on.
    unwired: frozenset[str] = field(default_factory=frozenset)
    #: Entries of the UPDATE_OPS collection no train op depends on (the collection may list an
    #: `If`'s output where the graph's update op sits inside its branch: counted separately).
    collection_not_run: tuple[str, ...] = ()


def analyze(file_graph: Graph, train_ops: list[str] | None = None) -> GraphFacts:
    """BN layers, their update ops and whether a train op runs them. `train_ops`: the ops that
    run a training step when the caller knows them; else the `train_op` collection, else the
    last ops downstream of the optimizer's apply ops. Raises `GraphBudgetError` when the
    graph needs more work than its size justifies."""
    graph = _Walks(file_graph)
    consumers = _consumers(graph)
    sites = _bn_sites(graph, consumers)
    updates = _updates(graph, sites)
    layers = _merge(graph, sites, updates)
    if train_ops is None:
        train_ops = _train_ops(graph, consumers)
    reached = _ancestors(graph, train_ops) if train_ops else set()
    all_updates = {u for layer in layers for u in layer.update_ops}
    unwired = frozenset(u for u in all_updates if u not in reached) if train_ops else frozenset()
    collection = tuple(graph.collections.get("update_ops", ()))
    not_run = tuple(u for u in collection if u not in reached) if train_ops else ()
    return GraphFacts(tuple(layers), tuple(train_ops), collection, unwired, not_run)



class _Walks:
    """The graph as the analysis walks it: backward walks are remembered (many ops share an
    input) and every step is paid from one budget, so the whole analysis is linear in the
    graph whatever its shape."""

    def __init__(self, graph: Graph) -> None:
        self.nodes = graph.nodes
        self.collections = graph.collections
        self.node = graph.node
        edges = sum(len(n.inputs) + len(n.control_inputs) for n in graph.nodes.values())
        self.steps_left = _MIN_STEPS + _STEPS_PER_EDGE * (len(graph.nodes) + edges)
        self.memo: dict[tuple[str, frozenset[str]], list[GraphNode]] = {}
        self.feeders: dict[str, tuple[frozenset[str], frozenset[str]]] = {}

    def spend(self, steps: int) -> None:
        self.steps_left -= steps
        if self.steps_left < 0:
            raise GraphBudgetError("the graph needs more analysis than its size justifies "
                                   "(long pass-through chains read by many ops)")


# --------------------------------------------------------------------------- BN ops


@dataclass
class _Site:
    """One normalization op (or pattern) with the variables and batch statistics it reads."""

    op: str
    roles: dict[str, set[str]] = field(default_factory=dict)
    producers: set[str] = field(default_factory=set)  # batch-statistic nodes it normalizes with
    training: bool = False
    switches: set[Switch] = field(default_factory=set)
    x: str | None = None  # the normalized tensor
    #: Variables update ops write, by role: used only where no normalizing op reads one.
    updated: dict[str, set[str]] = field(default_factory=dict)
    #: Some batch statistic it normalizes with reduces over the batch axis (0).
    batch_axis: bool = False


def _bn_sites(graph: _Walks, consumers: Mapping[str, list[GraphNode]]) -> list[_Site]:
    sites = []
    for node in graph.nodes.values():
        if node.op in _FUSED:
            site = _Site(node.name, training=node.flags.get("is_training", True))
            site.x = _data_source(graph, node.inputs[0]) if node.inputs else None
            site.producers.add(node.name)
            for index, role in _FUSED_ROLES.items():
                if index < len(node.inputs):
                    site.roles[role] = _variables(graph, node.inputs[index])
            sites.append(site)
        elif node.op == "Rsqrt":
            pattern = _pattern_site(graph, node, consumers)
            if pattern is not None:
                sites.append(pattern)
    for site in sites:
        site.switches = _switches(graph, graph.nodes[site.op])
    return sites


def _pattern_site(
    graph: _Walks, rsqrt: GraphNode, consumers: Mapping[str, list[GraphNode]]
) -> _Site | None:
    """`tf.nn.batch_normalization`: inv = rsqrt(var + eps) [* scale]; y = x * inv + (offset -
    mean * inv)."""
    add = graph.node(rsqrt.inputs[0]) if rsqrt.inputs else None
    if add is None or add.op not in ("Add", "AddV2"):
        return None
    site = _Site(rsqrt.name)
    site.roles["moving_variance"] = set()
    for ref in add.inputs:
        variables, producers = _feeders(graph, ref)
        site.roles["moving_variance"] |= variables
        site.producers |= producers
    inv = rsqrt
    for c in consumers.get(rsqrt.name, ()):
        if c.op == "Mul":
            other = [r for r in c.inputs if node_name(r) != rsqrt.name]
            scale = set().union(*(_variables(graph, r) for r in other)) if other else set()
            if scale:
                site.roles["gamma"] = scale
                inv = c
                break
    muls = [c for c in consumers.get(inv.name, ()) if c.op == "Mul"]
    # x * inv is the Mul whose output is added to the mean's Sub (gradient Muls are not):
    # what each Mul is added to, found once (not per pair of Muls).
    added_to: dict[str, GraphNode] = {}
    for xm in muls:
        for a in consumers.get(xm.name, ()):
            if a.op in ("Add", "AddV2"):
                graph.spend(len(a.inputs))
                added_to.update(dict.fromkeys(map(node_name, a.inputs), xm))
    for c in muls:
        users = consumers.get(c.name, ())
        graph.spend(1 + len(users))
        sub = next((u for u in users if u.op in ("Sub", "Neg")), None)
        if sub is None:
            continue
        x_mul = added_to.get(sub.name)
        if x_mul is not None:
            x_ref = next((r for r in x_mul.inputs if node_name(r) != inv.name), None)
            site.x = _data_source(graph, x_ref) if x_ref else None
        for ref in c.inputs:
            if node_name(ref) != inv.name:
                site.roles["moving_mean"], producers = _feeders(graph, ref)
                site.producers |= producers
        if sub.op == "Sub" and sub.inputs:
            site.roles["beta"] = _variables(graph, sub.inputs[0])
    site.training = bool(site.producers)
    site.batch_axis = any(_reduces_batch_axis(graph, p) for p in site.producers)
    has_stats = site.roles.get("moving_mean") or site.roles.get("moving_variance")
    return site if has_stats or site.producers else None


def _reduces_batch_axis(graph: _Walks, producer: str) -> bool:
    """A `Mean` whose constant reduction axes include 0: a batch statistic, as BN computes
    it; layer, instance and group norm never reduce over the batch."""
    node = graph.nodes.get(producer)
    if node is None or node.op != "Mean" or len(node.inputs) < 2:
        return False
    for src in _walk_back(graph, node.inputs[1], frozenset({"Identity"})):
        if src.op == "Const" and src.ints is not None:
            return 0 in src.ints
    return False


def _data_source(graph: _Walks, ref: str) -> str:
    """`ref` followed back through v1 control flow (`Switch`, `Identity`, `Enter`) to the
    tensor that computes it: fetching a `Switch` output of a branch not taken fails."""
    for _ in range(64):
        node = graph.node(ref)
        if node is None or node.op not in ("Switch", "RefSwitch", "Identity", "Enter") \
                or not node.inputs:
            return ref
        ref = node.inputs[0]
    return ref


def _variables(graph: _Walks, ref: str) -> set[str]:
    """Variables whose value reaches `ref` through pass-through ops only."""
    return set(_feeders(graph, ref)[0])


def _feeders(graph: _Walks, ref: str) -> tuple[set[str], set[str]]:
    """Variables, and batch-statistic nodes (`Mean`, fused BN), whose value reaches `ref`
    through pass-through ops only: one walk for both, made once per ref. Callers get copies
    (they add to them)."""
    known = graph.feeders.get(ref)
    if known is None:
        nodes = _walk_back(graph, ref, _PASS)
        known = graph.feeders[ref] = (
            frozenset(n.name for n in nodes if n.op in _VARIABLES),
            frozenset(n.name for n in nodes if n.op == "Mean" or n.op in _FUSED),
        )
    return set(known[0]), set(known[1])


def _walk_back(graph: _Walks, ref: str, through: frozenset[str]) -> list[GraphNode]:
    """Nodes reached backwards from `ref`, expanding only `through` ops (a Switch's predicate
    and an `If`'s predicate are not data)."""
    key = (ref, through)
    known = graph.memo.get(key)
    if known is not None:
        return known
    out: list[GraphNode] = []
    seen: set[str] = set()
    queue = deque([ref])
    while queue and len(seen) < _MAX_WALK:
        r = queue.popleft()
        graph.spend(1)
        node = graph.node(r)
        if node is None:
            continue
        key_r = f"{node.name}:{output_index(r)}"
        if key_r in seen:
            continue
        seen.add(key_r)
        out.append(node)
        if node.op in through:
            sources = _sources(node, r)
            graph.spend(len(sources))
            queue.extend(sources)
    graph.memo[key] = out
    return out


def _sources(node: GraphNode, ref: str) -> tuple[str, ...]:
    """What flows into output `ref` of `node`: the inlined results of a functional `If` /
    call, a `Switch`'s data (not its predicate), else every input; a functional op whose body
    was not inlined has no known source (its inputs are arguments, the predicate among them)."""
    if node.results:
        port = output_index(ref)
        return node.results[port] if port < len(node.results) else ()
    if node.op in ("Switch", "RefSwitch"):
        return node.inputs[:1]
    if node.op in ("If", "StatelessIf", "PartitionedCall", "StatefulPartitionedCall"):
        return ()
    return node.inputs


def _switches(graph: _Walks, op: GraphNode) -> set[Switch]:
    """What switches `op` between training and inference: the predicate of the `If` it was
    inlined from (control flow v2) or of the `Switch` ops its inputs pass (v1). For the
    `tf.nn.batch_normalization` pattern the statistics enter through `Rsqrt`'s `Add`."""
    preds: list[str] = []
    if op.guard is not None:
        preds.append(op.guard[0])
    starts = list(op.inputs)
    if op.op == "Rsqrt" and op.inputs:
        add = graph.node(op.inputs[0])
        starts += list(add.inputs) if add is not None else []
    for start in starts:
        for node in _walk_back(graph, start, _PASS):
            if node.op in ("Switch", "RefSwitch") and len(node.inputs) > 1:
                preds.append(node.inputs[1])
            if node.guard is not None:
                preds.append(node.guard[0])
    out = set()
    for pred in preds:
        for src in _walk_back(graph, pred, frozenset({"Identity", "Cast", "LogicalNot"})):
            if src.op in ("PlaceholderWithDefault", "Placeholder", "Const"):
                out.add(Switch(src.name, src.op, _default(graph, src)))
    return out


def _default(graph: _Walks, node: GraphNode) -> bool | None:
    if node.op == "Const":
        return bool(node.value) if node.value is not None else None
    if node.op == "PlaceholderWithDefault" and node.inputs:
        src = graph.node(node.inputs[0])
        if src is not None and src.op == "Const" and src.value is not None:
            return bool(src.value)
    return None


# --------------------------------------------------------------------------- updates


def _updates(graph: _Walks, sites: list[_Site]) -> list[tuple[str, str, str, int | None]]:
    """(update op, target variable, role, index of the site it belongs to) for every assign
    whose new value is computed from a batch statistic."""
    by_producer = {p: i for i, s in enumerate(sites) for p in s.producers}
    out = []
    for node in graph.nodes.values():
        if node.op not in _ASSIGNS or len(node.inputs) < 2 or _is_save_op(node.name):
            continue
        targets = _variables(graph, node.inputs[0])
        if len(targets) != 1:
            continue
        stats = _statistics(graph, node.inputs[1])
        if not stats:
            continue
        role = "moving_variance" if any(r == "moving_variance" for _, r in stats) else "moving_mean"
        site = next((by_producer[p] for p, _ in stats if p in by_producer), None)
        out.append((node.name, next(iter(targets)), role, site))
    return out


def _statistics(graph: _Walks, ref: str) -> list[tuple[str, str]]:
    """Batch statistics an update value is computed from: (producer, role). Stops at the first
    statistic, variable or 64 nodes, so earlier layers are never reached."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    queue = deque([ref])
    while queue and len(seen) < 64:
        r = queue.popleft()
        node = graph.node(r)
        if node is None or r in seen:
            continue
        seen.add(r)
        if node.op in _FUSED:
            port = output_index(r)
            if port in (1, 2):
                out.append((node.name, "moving_mean" if port == 1 else "moving_variance"))
            continue
        if node.op == "Mean":
            src = graph.node(node.inputs[0]) if node.inputs else None
            squared = src is not None and src.op == "SquaredDifference"
            out.append((node.name, "moving_variance" if squared else "moving_mean"))
            continue
        if node.op in _VARIABLES or node.op in ("Placeholder", "PlaceholderWithDefault"):
            continue
        sources = _sources(node, r)
        graph.spend(1 + len(sources))
        queue.extend(sources)
    return out


def _momentum(graph: _Walks, update_op: str) -> float | None:
    """The decay an update op uses, read from its constants:
    - `(var - batch) * (1 - momentum)` (Keras, tf.layers, `assign_moving_average`): a
      `Sub(1.0, momentum)`, the momentum possibly behind an `If` on the training switch (whose
      other branch returns 1.0: no update);
    - `var * momentum + batch * (1 - momentum)` (hand-written): a `Mul` of the variable by a
      constant."""
    node = graph.nodes.get(update_op)
    if node is None or len(node.inputs) < 2:
        return None
    target = _variables(graph, node.inputs[0])
    seen: set[str] = set()
    queue = deque([node.inputs[1]])
    scaled: float | None = None
    while queue and len(seen) < 64:
        r = queue.popleft()
        n = graph.node(r)
        if n is None or n.name in seen or n.op in _VARIABLES or n.op in _FUSED or n.op == "Mean":
            continue
        seen.add(n.name)
        if n.op == "Sub" and len(n.inputs) == 2:
            one = graph.node(n.inputs[0])
            if one is not None and one.op == "Const" and one.value == 1.0:
                values = [c.value for c in _walk_back(graph, n.inputs[1], _PASS)
                          if c.op == "Const" and isinstance(c.value, float) and 0 < c.value < 1]
                if values:
                    return float(max(values))
        if n.op == "Mul" and len(n.inputs) == 2 and scaled is None:
            consts = [c for c in (graph.node(i) for i in n.inputs)
                      if c is not None and c.op == "Const" and isinstance(c.value, float)]
            others = [i for i in n.inputs if (c := graph.node(i)) is None or c.op != "Const"]
            if (len(consts) == 1 and len(others) == 1 and 0 < float(consts[0].value or 0) < 1
                    and _variables(graph, others[0]) & target):
                scaled = float(consts[0].value or 0)
        graph.spend(1 + len(n.inputs))
        queue.extend(n.inputs)
    return scaled


def _is_save_op(name: str) -> bool:
    first = name.split("/", 1)[0]
    return first == "save" or (first.startswith("save_") and first[5:].isdigit())


# --------------------------------------------------------------------------- layers


def _merge(
    graph: _Walks, sites: list[_Site], updates: list[tuple[str, str, str, int | None]]
) -> list[GraphLayer]:
    """Sites that share a variable or a batch statistic are one layer (the training and the
    inference branch of one `cond`), plus the updates that belong to them."""
    parent = list(range(len(sites)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner: dict[str, int] = {}
    for i, site in enumerate(sites):
        for key in set().union(site.producers, *site.roles.values()):
            if key in owner:
                parent[find(i)] = find(owner[key])
            else:
                owner[key] = i
    extra: dict[str, list[str]] = {}  # update ops with no site, by the variable they write
    extra_role: dict[str, str] = {}
    for op, var, role, site_index in updates:
        if site_index is None and var in owner:
            site_index = owner[var]
        if site_index is None:
            extra.setdefault(var, []).append(op)
            extra_role[var] = role
            continue
        site = sites[find(site_index)]
        site.updated.setdefault(role, set()).add(var)
        site.producers.add(f"update:{op}")
    layers: dict[int, tuple[dict[str, set[str]], list[str], set[Switch], bool]] = {}
    updated: dict[int, dict[str, set[str]]] = {}
    batch_axis: dict[int, bool] = {}
    inputs: dict[int, list[str]] = {}
    for i, site in enumerate(sites):
        roles, ops, switches, training = layers.setdefault(find(i), ({}, [], set(), False))
        for role, names in site.roles.items():
            roles.setdefault(role, set()).update(names)
        for role, names in site.updated.items():
            updated.setdefault(find(i), {}).setdefault(role, set()).update(names)
        ops.extend(p[len("update:") :] for p in sorted(site.producers) if p.startswith("update:"))
        switches.update(site.switches)
        layers[find(i)] = (roles, ops, switches, training or site.training)
        batch_axis[find(i)] = batch_axis.get(find(i), False) or site.batch_axis
        if site.x is not None and site.x not in inputs.setdefault(find(i), []):
            inputs[find(i)].append(site.x)
    # Updates with no normalizing op are layers of their own (-1: no site), writing one
    # variable each.
    candidates = [(root, *layer, updated.get(root, {})) for root, layer in layers.items()]
    candidates += [(-1, {}, ops, set(), False, {extra_role[var]: {var}})
                   for var, ops in extra.items()]
    out = []
    for root, roles, ops, switches, training, written in candidates:
        # What inference reads is the layer's statistic; a variable only an update writes
        # (a zero-debias `biased` accumulator) is moving-average state.
        members = {role: sorted(names)[0] for role, names in roles.items() if names}
        for role, names in written.items():
            if not members.get(role):
                members[role] = sorted(names)[0]
        read = set(members.values())
        state = tuple(sorted({v for names in written.values() for v in names} - read))
        stats_only = False
        if not (members.get("moving_mean") or members.get("moving_variance") or ops):
            # Layer / group norm have no moving statistics either; batch norm's moments
            # reduce over the batch axis, theirs never do.
            if not (batch_axis.get(root) and (members.get("gamma") or members.get("beta"))):
                continue
            stats_only = True
        switches_sorted = tuple(sorted(switches, key=lambda s: s.node))
        update_ops = tuple(dict.fromkeys(ops))
        momenta = {m for op in update_ops if (m := _momentum(graph, op)) is not None}
        out.append(
            GraphLayer(
                _scope(members.values()),
                members,
                update_ops,
                switches_sorted,
                training,
                momenta.pop() if len(momenta) == 1 else None,
                tuple(inputs.get(root, ())),
                state,
                stats_only,
            )
        )
    order = {name: i for i, name in enumerate(graph.nodes)}
    out.sort(key=lambda layer: min(order.get(v, 0) for v in layer.members.values()))
    return out


def common_scope(names: Iterable[str]) -> str:
    """The longest scope all `names` share (`conv1/bn` for `conv1/bn/gamma` and
    `conv1/bn/beta`), or "" when they share none."""
    common: list[str] = []
    for parts in zip(*[n.split("/")[:-1] for n in names], strict=False):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    return "/".join(common)


def _scope(names: Iterable[str]) -> str:
    """A readable layer name: the variables' common scope, else the first one's top scope."""
    names = list(names)
    return common_scope(names) or (names[0].split("/")[0] if names else "?")


# --------------------------------------------------------------------------- training step


def _train_ops(graph: _Walks, consumers: Mapping[str, list[GraphNode]]) -> list[str]:
    listed = [n for n in graph.collections.get("train_op", ()) if n in graph.nodes]
    if listed:
        return listed
    applies = [n.name for n in graph.nodes.values() if n.op.startswith(_APPLY_PREFIXES)]
    if not applies:
        return []
    downstream: set[str] = set()
    queue = deque(applies)
    while queue:
        name = queue.popleft()
        if name in downstream:
            continue
        downstream.add(name)
        queue.extend(c.name for c in consumers.get(name, ()))
    return [n for n in downstream if not consumers.get(n)]


def _ancestors(graph: _Walks, names: Iterable[str]) -> set[str]:
    seen: set[str] = set()
    queue = deque(names)
    while queue:
        node = graph.node(queue.popleft())
        if node is None or node.name in seen:
            continue
        seen.add(node.name)
        queue.extend(node.inputs)
        queue.extend(node.control_inputs)
        for refs in node.results:
            queue.extend(refs)
    return seen


def _consumers(graph: _Walks) -> dict[str, list[GraphNode]]:
    """Who reads each node (data or control)."""
    out: dict[str, list[GraphNode]] = {}
    for node in graph.nodes.values():
        for ref in (*node.inputs, *node.control_inputs):
            out.setdefault(node_name(ref), []).append(node)
    return out
