"""QDQ weight encoding and static shapes for NPU targets (standard ONNX operators only).

Each constant MatMul weight becomes int8 with one symmetric scale per output column, dequantized by a
standard DequantizeLinear(axis=1) in front of the MatMul; the embedding table gets one scale per row
(axis=0) in front of its Gather. NPU compilers (QNN HTP) fold these pairs into int8 kernels; onnxruntime's
CPU provider runs them as written. Runs inside the portable worker process.
"""

from __future__ import annotations

import numpy as np

from .ir_edit import const, drop_if_unused


def _int8_per_channel(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 with one scale per index along `axis` of a 2-D weight."""
    amax = np.abs(w).max(axis=1 - axis)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    q = np.clip(np.rint(w / shaped), -127, 127).astype(np.int8)
    return q, scale


def qdq_weights_in_place(model, *, exclude: set[str]) -> list[str]:
    """MatMul(x, W) → MatMul(x, DequantizeLinear(Wq, s, axis=1)); Gather(E, ids) → Gather(DequantizeLinear(Eq, s, axis=0), ids)."""
    import onnx_ir as ir

    graph = model.graph
    count = {"MatMul": 0, "Gather": 0}
    for node in list(graph):
        if node.op_type not in count or node.name in exclude:
            continue
        idx = 1 if node.op_type == "MatMul" else 0
        weight = node.inputs[idx]
        if weight is None or weight.const_value is None or len(weight.shape or ()) != 2:
            continue
        w = weight.const_value.numpy().astype(np.float32)
        if node.op_type == "Gather" and w.shape[0] < 2:
            continue
        axis = 1 if node.op_type == "MatMul" else 0
        q, scale = _int8_per_channel(w, axis)
        qv, sv = const(f"{weight.name}_qdq_int8", q), const(f"{weight.name}_qdq_scale", scale)
        graph.register_initializer(qv)
        graph.register_initializer(sv)
        dq = ir.Node("", "DequantizeLinear", [qv, sv], attributes=[ir.AttrInt64("axis", axis)],
                     name=f"{node.name}_weight/DequantizeLinear", num_outputs=1)
        dq.outputs[0].name = f"{weight.name}_dequantized"
        dq.outputs[0].shape, dq.outputs[0].type = ir.Shape(w.shape), ir.TensorType(ir.DataType.FLOAT)
        graph.insert_before(node, dq)
        node.replace_input_with(idx, dq.outputs[0])
        drop_if_unused(graph, weight)
        count[node.op_type] += 1
    return [f"QDQ int8 weights: {count['MatMul']} MatMul (per output column) and {count['Gather']} Gather "
            "(per row) through standard DequantizeLinear"]


def fix_static_shapes(model, context: int) -> list[str]:
    """Batch 1, one token per step, KV of context - 1 slots (+1 = context for the attention mask/present).

    Sets the graph's input and output dimensions (onnx_ir model, before saving); onnxruntime and NPU
    compilers infer the rest."""
    import onnx_ir as ir

    dims = {"batch_size": 1, "sequence_length": 1, "past_sequence_length": context - 1,
            "past_sequence_length + sequence_length": context}
    left = set()
    for v in [*model.graph.inputs, *model.graph.outputs]:
        fixed = []
        for d in v.shape or ():
            name = d.value if isinstance(d, ir.SymbolicDim) else None
            if name is None:
                fixed.append(d)
            elif name in dims:
                fixed.append(dims[name])
            else:
                left.add(name)
                fixed.append(d)
        v.shape = ir.Shape(fixed)
    if left:
        raise RuntimeError(f"dimensions still symbolic after fixing: {sorted(left)}")
    return [f"static shapes: batch 1, 1 token per step, KV cache {context - 1} slots + the current token"]
