"""Each decoder layer's gate and up projections as one MatMulNBits node, split after.

The two read the same input; as two nodes they are two passes of onnxruntime's MatMulNBits kernel over half the
columns each (thread-pool dispatch, the input's int8 quantization at accuracy level 4, partial rows of the weights'
blocks). One node over the concatenated columns, as llama.cpp and onnxruntime-genai's packed-MLP models (Phi-3's
gate_up_proj) do: the Qwen2.5-0.5B shape's default decodes 1.02x as fast, greedy tokens equal (fresh processes
alternated over 8 rounds, benchmarks/ab_decode.py; 2 cores, AVX-512 VNNI). Fused only where both nodes carry the same
settings (bits, block, accuracy level, zero points or none, no bias or g_idx): a mixed-precision plan may give them
different ones. The weights, scales and zero points are laid out per output column, so the fused node's are the two
concatenated.
"""

from __future__ import annotations

import numpy as np

from .graph_edit import node_attrs, replace_nodes

GATE, UP, GATE_UP = "mlp/gate_proj", "mlp/up_proj", "mlp/gate_up_proj"
FUSED = {GATE_UP: (GATE, UP)}  # a fused node in a layer -> the nodes (and HF modules' nodes) it holds, in order


def _pairs(graph) -> list[tuple]:
    """(gate node, up node) of each layer whose two MatMulNBits can be one."""
    nodes = {n.name: n for n in graph.node if n.op_type == "MatMulNBits"}
    out = []
    for name, gate in nodes.items():
        if f"/{GATE}/" not in name:
            continue
        up = nodes.get(name.replace(f"/{GATE}/", f"/{UP}/"))
        if up is None or gate.input[0] != up.input[0]:
            continue
        a, b = node_attrs(gate), node_attrs(up)
        extra = [i for node in (gate, up) for i in list(node.input)[4:] if i]  # g_idx, bias
        if extra or len(gate.input) != len(up.input) or {**a, "N": 0} != {**b, "N": 0}:
            continue
        out.append((gate, up))
    return out


def fuse_gate_up(model) -> str | None:
    """Fuse gate and up where they can be in `model` (its weights in memory; graph_edit.edit_graph): a note, or None
    where no layer could be."""
    from onnx import helper, numpy_helper

    pairs = _pairs(model.graph)
    if not pairs:
        return None
    inits = {t.name: t for t in model.graph.initializer}
    replace, drop, added = {}, set(), []
    for gate, up in pairs:
        a, b = node_attrs(gate), node_attrs(up)
        base = gate.name.replace(f"/{GATE}/", f"/{GATE_UP}/").rsplit("/", 1)[0]
        ins = [gate.input[0]]
        for i, what in enumerate(("weight", "scales", "zero_points")[:len(gate.input) - 1], start=1):
            x, y = (numpy_helper.to_array(inits[n.input[i]]) for n in (gate, up))
            added.append(numpy_helper.from_array(np.concatenate([x, y], axis=0), f"{base}.{what}"))
            ins.append(added[-1].name)
        added.append(numpy_helper.from_array(np.array([a["N"], b["N"]], np.int64), f"{base}.split"))
        fused = helper.make_node("MatMulNBits", ins, [f"{base}/output_0"], name=f"{base}/MatMulNBits",
                                 domain="com.microsoft", **{**a, "N": a["N"] + b["N"]})
        split = helper.make_node("Split", [fused.output[0], added[-1].name], [gate.output[0], up.output[0]],
                                 name=f"{base}/Split", axis=-1)
        replace[gate.name], drop = (fused, split), drop | {up.name}
    nodes = []
    for n in model.graph.node:
        if n.name in drop:
            continue
        nodes.extend(replace.get(n.name, (n,)))
    replace_nodes(model.graph, nodes, added)
    return (f"gate and up projections fused into one MatMulNBits + Split in {len(pairs)} layer(s) (same settings; "
            "one kernel pass over the layer's input)")
