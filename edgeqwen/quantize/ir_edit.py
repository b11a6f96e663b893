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
