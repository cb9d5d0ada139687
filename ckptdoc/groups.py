"""Which variables form one batch-norm layer. Knows naming conventions, nothing about bytes.

Sources of structure, strongest first:
- readers that know the model (object graphs, Keras files) give `LayerNode`s: we keep the
  ones whose class is a BN class, or, when the class is unknown, whose variables look like BN;
- a TF graph next to a name-based checkpoint (`model.ckpt.meta`, a TF1 `saved_model.pb`):
  `graph_bn.py` finds the BN layers from their ops, whatever the variables are called; names
  only label them;
- flat name-based checkpoints without a graph (TF1 `Saver`, slim, Estimator) give only keys:
  we group keys by their scope when the last path component is a BN variable name.

The tensors are what ships; a graph or a model config is evidence, as forgeable as the rest.
So the names-based groups are always made too and reconciled with the stronger source
(`discover`): the stronger source may add layers and explain them, never remove one. A layer
its names show and the source does not list is audited by its names; a source that gives a
tensor another role than its name (a graph that reads `bn/gamma` as a mean) is not used for
that layer, and a note says so.

A group is still a group when members are missing: that is the bug users have.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from ckptdoc.checkpoint import Checkpoint, LayerNode, TensorInfo

if TYPE_CHECKING:  # graph analysis loads only for files that carry a graph
    from ckptdoc.graph_bn import GraphFacts, GraphLayer

#: The four statistics and parameters every BN layer may own, in display order.
ROLES: tuple[str, ...] = ("gamma", "beta", "moving_mean", "moving_variance")

# Other names for a role: Keras 1 kept `running_mean` / `running_std` (the latter held the
# variance in late Keras 1); PyTorch-converted models use `running_var`.
_ROLE_ALIASES: dict[str, str] = {
    "gamma": "gamma",
    "beta": "beta",
    "moving_mean": "moving_mean",
    "moving_variance": "moving_variance",
    "running_mean": "moving_mean",
    "running_std": "moving_variance",
    "running_var": "moving_variance",
}

# Batch renormalization keeps these beside the usual four.
RENORM_EXTRAS: frozenset[str] = frozenset(
    {"moving_stddev", "renorm_mean", "renorm_stddev", "renorm_mean_weight", "renorm_stddev_weight"}
)

#: PyTorch's count of the batches a BN layer saw in training mode (its evidence of updates).
TRACKED = "num_batches_tracked"

# Zero-debias helpers of `assign_moving_average(zero_debias=True)`: `moving_mean/local_step`.
_DEBIAS_LEAVES: frozenset[str] = frozenset({"biased", "local_step"})

_KERAS1_INNER = re.compile(r"^(?P<layer>.+?)_(?P<leaf>gamma|beta|running_mean|running_std)$")
_BN_NAME = re.compile(r"(?i)(batch_?norm|batchnormalization|(^|[^a-z])bn(\d+|_\w*)?$)")
_NOT_BN_NAME = re.compile(r"(?i)(layer_?norm|group_?norm|instance_?norm)")
_OBJECT_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


@dataclass(frozen=True)
class Evidence:
    """What the file proves about how one BN layer was found and trained.

    Filled from the strongest source the file has: a graph (update ops wired to the train op
    or not, a training switch that defaults to inference), a step counter and a momentum.
    """

    #: How the layer was recognised: "graph", "config", "object graph", "structure",
    #: "state_dict" (PyTorch), "names".
    found_by: str = "names"
    #: True: the train op runs this layer's moving-average updates; False: it provably does
    #: not; None: the file cannot tell.
    updates_run: bool | None = None
    #: The proof, in words (`the train op `Adam` does not depend on ...`).
    updates_detail: str = ""
    #: Non-empty when the graph says BN most likely trained in inference mode, and why.
    inference_mode: str = ""
    #: Training steps the file records, and where it found them.
    steps: int | None = None
    steps_source: str = ""
    #: The BN momentum (decay), and where it comes from (config, graph, framework default).
    momentum: float | None = None
    momentum_source: str = ""
    #: The graph shows this layer normalizing only with batch statistics: it has no moving
    #: statistics at all, so inference cannot compute what training did.
    batch_stats_only: bool = False
    #: PyTorch's `num_batches_tracked`: how many batches BN saw in training mode.
    tracked: int | None = None

    @property
    def initial_weight(self) -> float | None:
        """How much of its initial value each moving statistic still holds: momentum**steps."""
        if self.steps is None or self.momentum is None or not 0 <= self.momentum < 1:
            return None
        return float(self.momentum**self.steps)


@dataclass(frozen=True)
class BNGroup:
    """One batch-norm layer as found in a checkpoint.

    `members` maps each role in ROLES to the variable's key in the file, or None when absent.
    `extras` holds renorm and zero-debias variables by their layer-local name.
    """

    name: str
    members: Mapping[str, str | None]
    extras: Mapping[str, str] = field(default_factory=dict)
    class_name: str | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    evidence: Evidence = field(default_factory=Evidence)

    def key(self, role: str) -> str | None:
        return self.members.get(role)

    @property
    def present(self) -> list[str]:
        return [role for role in ROLES if self.members.get(role)]

    @property
    def all_keys(self) -> list[str]:
        return [k for k in self.members.values() if k] + list(self.extras.values())

    def channels(self, tensors: Mapping[str, TensorInfo]) -> int | None:
        """Channel count from the first member present (all members share one shape)."""
        for key in self.all_keys:
            info = tensors.get(key)
            if info is not None and info.shape:
                return info.size
        return None


@dataclass(frozen=True)
class Discovery:
    """The BN groups of a file, and what reconciling its sources of evidence found."""

    groups: list[BNGroup]
    #: Where sources disagreed or one left tensors out, in words (reported as file notes).
    notes: tuple[str, ...] = ()


def find_groups(checkpoint: Checkpoint, graph: GraphFacts | None = None) -> list[BNGroup]:
    """Every BN group in `checkpoint`, in model (or file) order. `graph`: what `graph_bn`
    found in the TF graph that came with a name-based checkpoint."""
    return discover(checkpoint, graph).groups


def discover(checkpoint: Checkpoint, graph: GraphFacts | None = None) -> Discovery:
    """`find_groups` with the notes of the reconciliation: the file's own structure or graph
    against the tensors' names."""
    tensors = checkpoint.tensors
    named = _groups_from_names(tensors)
    layers = checkpoint.layers
    if layers is not None:
        strong = [g for node in layers if (g := _group_from_layer(node)) is not None]
        source = "the file's model structure"
    elif graph is not None:
        strong = _groups_from_graph(graph, tensors)
        source = "the graph beside the checkpoint"
    else:
        return Discovery(_with_debias_state(named, tensors))
    groups, notes = _reconcile(strong, named, source)
    return Discovery(_with_debias_state(groups, tensors), tuple(notes))


def _reconcile(
    strong: list[BNGroup], named: list[BNGroup], source: str
) -> tuple[list[BNGroup], list[str]]:
    """The stronger source's groups, checked against the groups the names show: a named layer
    the source lists nowhere is added; a tensor the source gives another role than its name
    makes the names decide that layer; a member the source does not read is added."""
    claims: dict[str, tuple[int, str]] = {}
    for i, g in enumerate(strong):
        for role, key in g.members.items():
            if key:
                claims.setdefault(key, (i, role))
        for local, key in g.extras.items():
            claims.setdefault(key, (i, "state " + local))
    out = list(strong)
    dropped: set[int] = set()
    notes: list[str] = []
    for n in named:
        owners = sorted({claims[k][0] for k in n.all_keys if k in claims})
        conflicts = [
            (key, role, claims[key])
            for role, key in [*((r, k) for r, k in n.members.items() if k),
                              *(("state " + loc, k) for loc, k in n.extras.items())]
            if key in claims and claims[key][1] != role
            and not (role.startswith("state") and claims[key][1].startswith("state"))
        ]
        unclaimed = {r: k for r, k in n.members.items() if k and k not in claims}
        fillable = len(owners) == 1 and all(
            not out[owners[0]].members.get(r) for r in unclaimed)
        if not conflicts and not owners:
            out.append(replace(n, evidence=Evidence(found_by="names")))
            notes.append(
                f"`{n.name}` is a BN layer by its tensors' names ({', '.join(n.present)}), but "
                f"{source} does not list it as one: audited by its names")
            continue
        if conflicts or (unclaimed and not fillable):
            dropped.update(owners)
            key, role, (i, claimed) = conflicts[0] if conflicts else (
                next(iter(unclaimed.values())), next(iter(unclaimed)), (owners[0], "?"))
            why = (f"reads `{key}` as {claimed.replace('state ', 'update state ')} of "
                   f"`{strong[i].name}`, but its name makes it {role.replace('state ', '')}"
                   if conflicts else
                   f"gives `{strong[i].name}` another {role} than `{key}`")
            notes.append(f"{source} {why}: the two disagree, so `{n.name}` is audited by "
                         "its tensors' names, not by that source")
            out.append(replace(n, evidence=Evidence(found_by="names")))
            continue
        if unclaimed or any(k not in claims for k in n.extras.values()):
            i = owners[0]
            g = out[i]
            extras = {**{loc: k for loc, k in n.extras.items() if k not in claims}, **g.extras}
            out[i] = replace(g, members={**g.members, **unclaimed}, extras=extras)
            if unclaimed:
                listed = ", ".join(f"`{k}` ({r})" for r, k in unclaimed.items())
                notes.append(f"{source} does not read {listed} for `{g.name}`; the checkpoint "
                             "holds it under that name, so it is audited too")
    return [g for i, g in enumerate(out) if i not in dropped], notes


def _with_debias_state(groups: list[BNGroup], tensors: Mapping[str, TensorInfo]) -> list[BNGroup]:
    """Attach `assign_moving_average(zero_debias=True)` state to the layer it belongs to: for a
    statistic `bn/moving_mean` it lives at `<scope>/bn/moving_mean/biased` and `.../local_step`
    (slim doubles the scope), where names-based grouping cannot see the owner."""
    owner: dict[str, tuple[int, str]] = {}
    for i, g in enumerate(groups):
        for role in ("moving_mean", "moving_variance"):
            key = g.members.get(role)
            if key:
                owner[strip_object_suffix(key)] = (i, role)
    if not owner:
        return groups
    extras: dict[int, dict[str, str]] = {}
    for key in tensors:
        base, _, leaf = strip_object_suffix(key).rpartition("/")
        if leaf not in _DEBIAS_LEAVES:
            continue
        for stat, (i, role) in owner.items():
            if base == stat or base.endswith("/" + stat):
                if key not in groups[i].all_keys:
                    extras.setdefault(i, {})[f"{role}/{leaf}"] = key
                break
    return [replace(g, extras={**g.extras, **extras[i]}) if i in extras else g
            for i, g in enumerate(groups)]


def strip_object_suffix(key: str) -> str:
    """A TF2 object-checkpoint key without its `/.ATTRIBUTES/VARIABLE_VALUE` suffix."""
    return key[: -len(_OBJECT_SUFFIX)] if key.endswith(_OBJECT_SUFFIX) else key


def _common_scope(names: Iterable[str]) -> str:
    from ckptdoc.graph_bn import common_scope

    return common_scope(names)


def _groups_from_graph(facts: GraphFacts, tensors: Mapping[str, TensorInfo]) -> list[BNGroup]:
    """A group per BN layer the graph's ops prove; a member the graph has but the checkpoint
    lacks is missing (BN001), not ignored. Layers with no variable in the checkpoint belong to
    another checkpoint of the same graph and are skipped."""
    out = []
    for layer in facts.layers:
        if not any(v in tensors for v in layer.members.values()):
            continue
        members: dict[str, str | None] = {
            role: (layer.members[role] if layer.members.get(role) in tensors else None)
            for role in ROLES
        }
        # Update-only state (zero-debias accumulators) by its layer-local name.
        extras = {_local(v): v for v in layer.state if v in tensors}
        # Named from what the checkpoint holds: a graph may name variables it lacks.
        name = _common_scope(k for k in members.values() if k) or layer.name
        out.append(BNGroup(name, members, extras, None, {}, from_graph(layer, facts)))
    return out


def _local(key: str) -> str:
    """`bn/bn/moving_mean/biased` -> `moving_mean/biased`: the last two components name the
    state (its statistic and its kind)."""
    return "/".join(key.split("/")[-2:])


def is_bn_class(class_name: str) -> bool:
    """Keras class names of batch-norm layers, in any version or namespace."""
    base = class_name.rsplit(">", 1)[-1].rsplit(".", 1)[-1]
    return "BatchNorm" in base and not _NOT_BN_NAME.search(base)


def role_of(local_name: str) -> str | None:
    """The BN role of a layer-local variable name, if it names one."""
    leaf = local_name.rsplit("/", 1)[-1]
    if leaf in _ROLE_ALIASES:
        return _ROLE_ALIASES[leaf]
    # Keras 1 prefixed names with the layer: `batchnormalization_1_running_mean`.
    for alias, role in _ROLE_ALIASES.items():
        if leaf.endswith("_" + alias) and alias.startswith("running_"):
            return role
    return None


def _group_from_layer(node: LayerNode) -> BNGroup | None:
    members: dict[str, str | None] = dict.fromkeys(ROLES)
    extras: dict[str, str] = {}
    for local, key in node.members.items():
        role = role_of(local)
        if role is not None and members[role] is None:
            members[role] = key
        elif (local.rsplit("/", 1)[-1] in RENORM_EXTRAS or _is_debias(local)
              or local == TRACKED):
            extras[local] = key
    if node.class_name is not None:
        if not is_bn_class(node.class_name):
            return None
    elif not _looks_like_bn(node.name, members):
        return None
    if not any(members.values()) and not extras:
        return None
    return BNGroup(node.name, members, extras, node.class_name, dict(node.config),
                   Evidence(found_by=node.found_by))


def _looks_like_bn(name: str, members: Mapping[str, str | None]) -> bool:
    """Without a class: moving stats make a BN layer; gamma/beta alone need a BN-like name,
    since LayerNormalization also owns gamma and beta."""
    if _NOT_BN_NAME.search(name):
        return False
    if members["moving_mean"] or members["moving_variance"]:
        return True
    return bool((members["gamma"] or members["beta"]) and _BN_NAME.search(name))


def _is_debias(local: str) -> bool:
    parts = local.split("/")
    return len(parts) >= 2 and parts[-1] in _DEBIAS_LEAVES and role_of(parts[-2]) is not None


def _groups_from_names(tensors: Mapping[str, TensorInfo]) -> list[BNGroup]:
    """Group flat keys by scope; match on the last path component, never on substrings, so
    `bn/gamma/Adam` (a slot) and `bn/moving_mean/ExponentialMovingAverage` stay out."""
    scopes: dict[str, dict[str, str]] = {}
    for key in tensors:
        if ".OPTIMIZER_SLOT" in key or key.startswith("optimizer/"):
            continue
        name = re.sub(r":\d+$", "", strip_object_suffix(key))
        parts = name.split("/")
        inner = _KERAS1_INNER.match(parts[-1])
        if inner is not None:  # Keras 1: `batchnormalization_3_running_std`, one per layer
            parts[-1:] = [inner["layer"], inner["leaf"]]
        if len(parts) >= 3 and _is_debias("/".join(parts[-2:])):
            scope, local = "/".join(parts[:-2]), "/".join(parts[-2:])
        elif len(parts) >= 2:
            scope, local = "/".join(parts[:-1]), parts[-1]
        else:
            continue
        if role_of(local) is None and local not in RENORM_EXTRAS and not _is_debias(local):
            continue
        scopes.setdefault(scope, {})[local] = key
    nodes = [LayerNode(scope, members) for scope, members in scopes.items()]
    return [g for node in nodes if (g := _group_from_layer(node)) is not None]


def group_keys(groups: Iterable[BNGroup]) -> set[str]:
    """Every key that belongs to some BN group."""
    return {key for g in groups for key in g.all_keys}


def from_graph(layer: GraphLayer, facts: GraphFacts) -> Evidence:
    """The update-op and training-switch evidence of one layer of a TF graph."""
    train = ", ".join(f"`{t}`" for t in facts.train_ops[:3])
    switch = next((s for s in layer.switches if s.default is False), None)
    if layer.batch_stats_only:
        return Evidence("graph", None, "", batch_stats_only=True)
    if facts.train_ops and layer.update_ops:
        skipped = [u for u in layer.update_ops if u in facts.unwired]
        if skipped:
            listed = len(facts.update_collection)
            not_run = len(facts.collection_not_run)
            where = f" ({not_run} of the {listed} ops in UPDATE_OPS are not run)" if listed else ""
            return Evidence(
                "graph",
                False,
                f"the train op {train} does not depend on this layer's "
                f"{len(skipped)} moving-average update ops{where}",
                momentum=layer.momentum,
            )
        return Evidence(
            "graph",
            True,
            f"the train op {train} runs this layer's update ops",
            momentum=layer.momentum,
        )
    if facts.train_ops and layer.has_training_mode and not layer.update_ops:
        return Evidence("graph", False, "no op in the graph updates this layer's moving statistics")
    if not facts.train_ops and switch is not None:
        collected = set(layer.update_ops) & set(facts.update_collection)
        if not collected:
            return Evidence(
                "graph",
                None,
                "",
                f"BN switches on {switch.describe()}, and nothing in the file would run its "
                "moving-average updates (no train op, no UPDATE_OPS collection): the model most "
                "likely trained, and is served, with BN in inference mode, so 0 / 1 is what its "
                "weights learned with",
                momentum=layer.momentum,
            )
    return Evidence("graph", momentum=layer.momentum)
