"""Hostile graph and metadata files (issue 22 §2), built byte by byte without TensorFlow.

Each case is a small TF1 checkpoint whose tensors alone prove a broken BN layer (trained
gamma / beta, statistics still at their initial 0 / 1), plus a `.meta` (or object graph, or
`keras_metadata.pb`) made to exhaust CPU or memory, or to trip the decoder. Whatever the
evidence does, the audit must keep the verdict the tensors give, in seconds.

`scripts/make_hostile_inputs.py` writes them all to a folder for manual runs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from tests.bundle_writer import field_bytes, field_varint, varint, write_bundle


def _fixed64(field: int, value: int) -> bytes:
    return varint((field << 3) | 1) + value.to_bytes(8, "little")


def node(name: str, op: str, inputs: list[str] | tuple[str, ...] = (), attrs: bytes = b"") -> bytes:
    out = field_bytes(1, name.encode()) + field_bytes(2, op.encode())
    out += b"".join(field_bytes(3, i.encode()) for i in inputs)
    return field_bytes(1, out + attrs)  # GraphDef.node


def attr(key: str, value: bytes) -> bytes:
    return field_bytes(5, field_bytes(1, key.encode()) + field_bytes(2, value))


def func_attr(key: str, fn: str) -> bytes:
    return attr(key, field_bytes(10, field_bytes(1, fn.encode())))  # AttrValue.func


def function(name: str, body: list[bytes], args: tuple[str, ...] = ()) -> bytes:
    """A FunctionDef; `body` holds `node(...)` encodings (re-tagged as FunctionDef.node_def)."""
    sig = field_bytes(1, name.encode())
    sig += b"".join(field_bytes(2, field_bytes(1, a.encode())) for a in args)
    nodes = b"".join(field_bytes(3, _untag(n)) for n in body)
    return field_bytes(1, field_bytes(1, sig) + nodes)  # FunctionDefLibrary.function


def _untag(encoded: bytes) -> bytes:
    """The NodeDef inside a `node(...)` encoding (drop its GraphDef.node tag and length)."""
    pos = 1
    while encoded[pos] & 0x80:
        pos += 1
    return encoded[pos + 1 :]


def meta_graph(nodes: list[bytes], library: list[bytes] = ()) -> bytes:  # type: ignore[assignment]
    graph = b"".join(nodes)
    if library:
        graph += field_bytes(2, b"".join(library))
    return field_bytes(2, graph)  # MetaGraphDef.graph_def


# --------------------------------------------------------------------------- the checkpoint


def broken_bundle(prefix: Path) -> Path:
    """A checkpoint whose tensors prove one broken BN layer: trained gamma / beta and
    statistics still exactly 0 / 1 (BN001)."""
    rng = np.random.default_rng(0)
    write_bundle(prefix, {
        "conv/kernel": rng.normal(size=(3, 3, 3, 8)).astype(np.float32),
        "bn/gamma": (1 + 0.3 * rng.normal(size=8)).astype(np.float32),
        "bn/beta": (0.3 * rng.normal(size=8)).astype(np.float32),
        "bn/moving_mean": np.zeros(8, np.float32),
        "bn/moving_variance": np.ones(8, np.float32),
    })
    return prefix


# --------------------------------------------------------------------------- hostile graphs


def recursive_library() -> bytes:
    """1 KiB: a function calling itself through 16 nodes that share one name (16^8 inlinings
    under a depth cap alone)."""
    calls = [node("n", "PartitionedCall", (), func_attr("f", "f")) for _ in range(16)]
    return meta_graph([node("top", "PartitionedCall", (), func_attr("f", "f"))],
                      [function("f", calls)])


def switch_chain(length: int = 20_000) -> bytes:
    """A chain of `Switch` ops with a fused BN reading every link: each BN walks the chain."""
    nodes = [node("pred", "Placeholder"), node("s0", "VariableV2")]
    for i in range(1, length):
        nodes.append(node(f"s{i}", "Switch", (f"s{i - 1}", "pred")))
        if i % 2 == 0:
            nodes.append(node(f"b{i}", "FusedBatchNormV3", (f"s{i}",) * 5))
    return meta_graph(nodes)


def wide_identity(fan_in: int = 400_000, readers: int = 200) -> bytes:
    """One Identity with `fan_in` inputs, read by many BN ops (each walk re-reads it)."""
    nodes = [node("v", "VariableV2"), node("wide", "Identity", ("v",) * fan_in)]
    nodes += [node(f"b{i}", "FusedBatchNormV3", ("wide",) * 5) for i in range(readers)]
    return meta_graph(nodes)


def many_assigns(count: int = 60_000, chain: int = 3000) -> bytes:
    """60k Assign ops whose targets are all behind one long Identity chain."""
    nodes = [node("v", "VariableV2"), node("i0", "Identity", ("v",))]
    nodes += [node(f"i{k}", "Identity", (f"i{k - 1}",)) for k in range(1, chain)]
    nodes.append(node("m", "Mean", ("v",)))
    nodes += [node(f"a{k}", "Assign", (f"i{chain - 1}", "m")) for k in range(count)]
    return meta_graph(nodes)


def rsqrt_fan_out(muls: int = 8000) -> bytes:
    """One Rsqrt(var + eps) feeding 8,000 Muls, each with a Sub consumer: pairs of Muls."""
    nodes = [node("var", "VariableV2"), node("mean", "VariableV2"), node("x", "Placeholder"),
             node("eps", "Const"), node("add", "AddV2", ("var", "eps")),
             node("rs", "Rsqrt", ("add",))]
    for k in range(muls):
        nodes.append(node(f"m{k}", "Mul", ("x", "rs")))
        nodes.append(node(f"s{k}", "Sub", ("mean", f"m{k}")))
    return meta_graph(nodes)


def long_prefixes(callers: int = 15, name_bytes: int = 64 * 1024, body: int = 5000) -> bytes:
    """Callers with 64 KiB names inlining a function of many nodes: every inlined name and
    input carries the caller's name (about 20 GB of strings from a 1 MB file, unbounded)."""
    fn = function("g", [node(f"k{i}", "Identity", (f"k{i - 1}",) if i else ())
                        for i in range(body)])
    nodes = [node("c" * name_bytes + str(i), "PartitionedCall", (), func_attr("f", "g"))
             for i in range(callers)]
    return meta_graph(nodes, [fn])


def growing_prefixes(levels: int = 8, name_bytes: int = 16 * 1024, body: int = 1000) -> bytes:
    """Functions f0 -> f1 -> ... each calling the next through two long-named nodes: the
    prefix grows by 16 KiB per level while the calls double (no recursion needed)."""
    library = []
    for level in range(levels):
        calls = [node("p" * name_bytes + str(i), "PartitionedCall", (),
                      func_attr("f", f"f{level + 1}")) for i in range(2)]
        filler = [node(f"k{i}", "Identity") for i in range(body)]
        library.append(function(f"f{level}", calls + filler))
    return meta_graph([node("top", "PartitionedCall", (), func_attr("f", "f0"))], library)


def float_const_as_varint() -> bytes:
    """A float Const whose float_val is a varint past 32 bits (the wrong wire type)."""
    tensor = field_varint(1, 1) + field_varint(5, 1 << 40)
    return meta_graph([node("c", "Const", (), attr("value", field_bytes(8, tensor)))])


def float_const_as_fixed64() -> bytes:
    """A float Const whose float_val is a fixed64 (the wrong wire type)."""
    tensor = field_varint(1, 1) + _fixed64(5, 0xFFFF_FFFF_FFFF_FFFF)
    return meta_graph([node("c", "Const", (), attr("value", field_bytes(8, tensor)))])


GRAPHS: dict[str, Callable[[], bytes]] = {
    "recursive_library": recursive_library,
    "switch_chain": switch_chain,
    "wide_identity": wide_identity,
    "many_assigns": many_assigns,
    "rsqrt_fan_out": rsqrt_fan_out,
    "long_prefixes": long_prefixes,
    "growing_prefixes": growing_prefixes,
    "float_const_as_varint": float_const_as_varint,
    "float_const_as_fixed64": float_const_as_fixed64,
}


def write_case(folder: Path, name: str) -> Path:
    """`folder/name/model.ckpt` with the hostile `.meta`; returns the prefix."""
    prefix = broken_bundle(folder / name / "model.ckpt")
    Path(f"{prefix}.meta").write_bytes(GRAPHS[name]())
    return prefix


# --------------------------------------------------------------------------- object graphs


def object_chain(length: int = 60_000) -> bytes:
    """A TrackableObjectGraph that is one 60k-node chain of children (paths grow per step)."""
    out = b""
    for i in range(length):
        child = field_bytes(1, field_varint(1, i + 1) + field_bytes(2, b"c")) \
            if i + 1 < length else b""
        out += field_bytes(1, child)
    return out


def deep_json(depth: int = 100_000) -> str:
    return "[" * depth + "]" * depth


def deep_keras_metadata(depth: int = 100_000) -> bytes:
    """A keras_metadata.pb (SavedMetadata) whose one node's metadata is 100k-deep JSON."""
    entry = field_varint(2, 1) + field_bytes(4, b"_tf_keras_layer") \
        + field_bytes(5, deep_json(depth).encode())
    return field_bytes(1, entry)


def deep_json_config() -> str:
    return json.dumps({"class_name": "Functional"})[:-1] + ', "config": ' + deep_json() + "}"


def write_object_chain_case(folder: Path, length: int = 60_000) -> Path:
    """A TF2 object-based checkpoint whose object graph is one long chain."""
    prefix = folder / "object_chain" / "ckpt-1"
    tensors: dict[str, np.ndarray | bytes] = {
        f"bn/{k}/.ATTRIBUTES/VARIABLE_VALUE": v for k, v in _broken_stats().items()}
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = object_chain(length)
    write_bundle(prefix, tensors)
    return prefix


def write_deep_metadata_case(folder: Path) -> Path:
    """A SavedModel whose keras_metadata.pb holds 100k-deep JSON."""
    model = folder / "deep_metadata"
    tensors: dict[str, np.ndarray | bytes] = {f"bn/{k}": v for k, v in _broken_stats().items()}
    tensors["_CHECKPOINTABLE_OBJECT_GRAPH"] = object_chain(2)
    write_bundle(model / "variables" / "variables", tensors)
    (model / "saved_model.pb").write_bytes(b"")
    (model / "keras_metadata.pb").write_bytes(deep_keras_metadata())
    return model


def _broken_stats() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"gamma": (1 + 0.3 * rng.normal(size=8)).astype(np.float32),
            "beta": (0.3 * rng.normal(size=8)).astype(np.float32),
            "moving_mean": np.zeros(8, np.float32),
            "moving_variance": np.ones(8, np.float32)}
