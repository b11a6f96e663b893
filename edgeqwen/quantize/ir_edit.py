"""Small onnx_ir graph edits shared by the quantizers and the portable exporter (worker processes)."""

from __future__ import annotations

import numpy as np


def const(name: str, array: np.ndarray):
    """A constant value (initializer-to-be) holding `array`."""
    import onnx_ir as ir

    return ir.Value(name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype)),
                    const_value=ir.Tensor(array, name=name))


def replace_node(graph, old, new) -> None:
    """Put `new` where `old` was: its output takes over the old output's uses, name, shape and type."""
    import onnx_ir as ir

    old_out, new_out = old.outputs[0], new.outputs[0]
    new_out.shape, new_out.type = old_out.shape, old_out.type
    graph.insert_before(old, new)
    ir.convenience.replace_all_uses_with(old_out, new_out, replace_graph_outputs=True)
    name, old_out.name = old_out.name, None
    new_out.name = name
    graph.remove(old, safe=True)


def drop_if_unused(graph, value) -> None:
    """Remove an initializer nothing reads any more, and free its tensor."""
    if not value.uses():
        graph.initializers.pop(value.name, None)
        value.const_value = None


ALL_POSITIONS_OUTPUT = "logits_all"


def add_all_positions_head(graph) -> list[str]:
    """A graph built with the builder's `prune_lm_head` computes logits for the last position only (prefill runs the
    head once, not once per prompt token). Accuracy checks need every position: a second head node reads the hidden
    states before the pruning Gather, with the same weight tensors, into an extra output `logits_all`. onnxruntime
    computes only the outputs a run asks for, so decoding and onnxruntime-genai (which asks for `logits`) pay
    nothing for it."""
    import onnx_ir as ir

    gather = next((n for n in graph if n.name == "/lm_head/prune/Gather"), None)
    head = next((n for n in graph if any(o.name == "logits" for o in n.outputs)), None)
    if gather is None or head is None or head.op_type not in ("MatMulNBits", "MatMul"):
        raise RuntimeError("pruned lm_head not found as the builder writes it (Gather → Unsqueeze → MatMul(NBits) → "
                           f"logits); found {head.op_type if head is not None else 'no logits producer'}")
    logits = next(o for o in head.outputs if o.name == "logits")
    new = ir.Node(head.domain, head.op_type, [gather.inputs[0], *head.inputs[1:]],
                  attributes=list(head.attributes.values()), name=f"/lm_head/all_positions/{head.op_type}", num_outputs=1)
    out = new.outputs[0]
    out.name, out.type = ALL_POSITIONS_OUTPUT, logits.type
    out.shape = ir.Shape(["batch_size", "sequence_length", logits.shape[-1]])
    graph.append(new)
    graph.outputs.append(out)
    return [f"lm_head pruned to the last position for prefill; output {ALL_POSITIONS_OUTPUT} (same weights) for "
            "accuracy checks"]
