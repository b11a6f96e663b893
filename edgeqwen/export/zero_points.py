"""MatMulNBits nodes whose zero points are all the default level lose their zero-point input.

Symmetric weights carry no information in their zero points: every block's is the middle level, 2^(bits-1), which
is what MatMulNBits assumes when the input is absent. But an exporter may still write them — onnxruntime-genai
0.14.1's builder only imports pre-quantized q/k/v with zero points (it concatenates them), so a symmetric GPTQ
checkpoint goes in with the middle level spelled out. Without the input onnxruntime's kernel takes its symmetric
path: the Qwen2.5-0.5B shape's default decoded 1.06x as fast on an AVX2 CPU without VNNI (fresh processes
alternated, benchmarks/ab_decode.py), and the file sheds half a bit per block. The output is the same: the kernel
reads an absent zero point as the default.
"""

from __future__ import annotations

import numpy as np

from .graph_edit import node_attrs, replace_nodes


def default_levels(packed: np.ndarray, bits: int, blocks: int, n: int) -> bool:
    """Whether every block's zero point in `packed` (uint8, any shape: MatMulNBits stores [N * bytes per column];
    one run of bytes per output column, 8 // bits zero points per byte, low bits first) is 2^(bits-1); the padding
    of a column's last byte is not a block and is not read."""
    from ..quantize.graph_quant import unpack_levels

    levels = unpack_levels(packed.reshape(n, -1), bits).reshape(n, -1)[:, :blocks]
    return bool(np.all(levels == 1 << (bits - 1)))


def drop_default_zero_points(model) -> str | None:
    """Drop the zero-point input of every MatMulNBits in `model` (weights in memory; graph_edit.edit_graph) whose zero
    points are all the default; a note, or None where none were."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    dropped = 0
    for node in model.graph.node:
        if node.op_type != "MatMulNBits" or len(node.input) < 4 or node.input[3] not in inits:
            continue
        zp = numpy_helper.to_array(inits[node.input[3]])
        a = node_attrs(node)
        bits, block, k = a.get("bits", 4), a["block_size"], a["K"]
        if zp.dtype != np.uint8 or 8 % bits:  # float zero points (HQQ) are a real offset
            continue
        if not default_levels(zp, bits, -(-k // block), a["N"]):
            continue
        node.input[3] = ""
        while node.input and not node.input[-1]:  # a trailing empty input is no input
            del node.input[-1]
        dropped += 1
    if not dropped:
        return None
    replace_nodes(model.graph)  # the dropped zero points' initializers go
    return (f"zero points dropped from {dropped} MatMulNBits node(s): all at the default level (symmetric weights), "
            "so onnxruntime runs its symmetric kernel")
