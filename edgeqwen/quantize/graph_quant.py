"""edgeqwen's graph quantizer: MatMul → MatMulNBits inside the exporter's IR, one MatMul at a time.

Used by the low-memory builder path, the portable exporter and every "graph"-stage algorithm (whose registry
entry may bring its own block quantizer, e.g. rtn_clip); the per-node settings come resolved in a `QuantRequest`.

The builder's own `to_int4` serializes the whole model to a protobuf (a second full-precision copy of
every weight) before quantizing, so a build peaks at ~3× the fp32 checkpoint. Here each MatMul weight
is read, block-quantized with onnxruntime's C++ kernels (the ones its default MatMulNBits quantizer
uses), replaced by a MatMulNBits node, and its float initializer dropped, so the peak is the loaded
PyTorch model plus the quantized result. Names of the lm_head tensors follow the builder's RTN naming
so a tied embedding table can share them (GatherBlockQuantized).

Runs inside the builder worker process (no edgeqwen imports needed there).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from ..architectures import HEAD_NODE
from .ir_edit import const, drop_if_unused, replace_node
from .request import QuantRequest, Scheme


def require_planned_nodes(model, request: QuantRequest, exporter: str, head_only: bool = False) -> None:
    """The planner named every node it set from the architecture registry; a name the exporter's graph lacks means the
    registry and the exporter disagree — fail rather than quantize with the wrong settings. After a "checkpoint"
    stage the layers arrive pre-quantized (`head_only`), so only the lm_head is the exporter's to quantize."""
    planned = set(request.node_settings)
    if head_only:
        planned &= {HEAD_NODE}
    missing = sorted(planned - {n.name for n in model.graph})
    if missing:
        raise RuntimeError(f"planned nodes not in the {exporter}'s graph: {', '.join(missing[:5])} — the architecture "
                           f"registry's {exporter} node map for {request.architecture} is out of date")


def ort_block_quant(w: np.ndarray, bits: int, block: int, symmetric: bool):
    from onnxruntime.capi._pybind_state import quantize_matmul_4bits, quantize_matmul_8bits

    rows, cols = w.shape
    kpack = 8 // bits
    k_blocks = -(-rows // block)
    pad = k_blocks * block - rows
    if pad:
        w = np.pad(w, ((0, pad), (0, 0)))
    packed = np.zeros((cols, k_blocks, -(-block // kpack)), dtype=np.uint8)
    zero_points = np.zeros((cols, -(-k_blocks // kpack)), dtype=np.uint8)
    scales = np.zeros((cols, k_blocks), dtype=np.float32)
    fn = quantize_matmul_8bits if bits == 8 else quantize_matmul_4bits
    fn(packed, np.ascontiguousarray(w, dtype=np.float32), scales, zero_points, block, cols, rows, symmetric)
    return packed, scales, zero_points


def ort_block_dequant(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, block: int,
                      symmetric: bool, rows: int) -> np.ndarray:
    """What MatMulNBits computes with: the [K, N] float weights of `ort_block_quant`'s output (K = rows)."""
    cols, k_blocks, _ = packed.shape
    q = unpack_levels(packed, bits).reshape(cols, k_blocks, -1)[:, :, :block]
    if symmetric:
        zp = np.full((cols, k_blocks), 1 << (bits - 1), dtype=np.float32)
    else:
        zp = unpack_levels(zero_points, bits).reshape(cols, -1)[:, :k_blocks].astype(np.float32)
    w = (q.astype(np.float32) - zp[:, :, None]) * scales[:, :, None]
    return np.ascontiguousarray(w.reshape(cols, k_blocks * block)[:, :rows].T)


def unpack_levels(packed: np.ndarray, bits: int) -> np.ndarray:
    """uint8 bytes → their `8 // bits` values each along a new last axis, the first in the lowest bits."""
    if bits == 8:
        return packed[..., None]
    mask = (1 << bits) - 1
    return np.stack([(packed >> (bits * i)) & mask for i in range(8 // bits)], axis=-1)


def quantize_in_place(model, request: QuantRequest, *, exclude: set[str], shared_lm_head: bool,
                      block_quant: Callable = ort_block_quant) -> list[str]:
    """Replace every constant-weight MatMul in `model` (onnx_ir.Model) with MatMulNBits, each with the request's
    settings for that node (`request.node_setting`). Returns notes."""
    import onnx_ir as ir

    graph = model.graph
    notes: list[str] = []
    count = 0
    for node in list(graph):
        if node.op_type != "MatMul" or node.name in exclude:
            continue
        weight = node.inputs[1]
        if weight is None or weight.const_value is None or len(weight.shape or ()) != 2:
            continue
        entry = request.node_setting(node.name)
        bits, bsize, sym = entry.bits, entry.group_size, entry.scheme == Scheme.SYM
        count += 1
        tensor = weight.const_value
        dtype = tensor.dtype
        w = tensor.numpy()
        if w.dtype != np.float32:
            w = w.astype(np.float32)
        k, n = w.shape
        packed, scales, zero_points = block_quant(w, bits, bsize, sym)
        del w
        if dtype == ir.DataType.FLOAT16:
            scales = scales.astype(np.float16)
        if node.name == HEAD_NODE and shared_lm_head:
            base = "lm_head.MatMul.weight"  # the names the builder's GatherBlockQuantized embedding points at
            names = (f"{base}_Q{bits}G{bsize}", f"{base}_scale", f"{base}_zp")
        else:
            names = (f"{weight.name}_Q{bits}", f"{weight.name}_scales", f"{weight.name}_zero_points")
        values = [const(name, array) for name, array in zip(names, (packed, scales, zero_points))]
        for v in values:
            graph.register_initializer(v)
        inputs = [node.inputs[0], values[0], values[1]] + ([] if sym else [values[2]])
        attrs = [ir.AttrInt64("K", k), ir.AttrInt64("N", n), ir.AttrInt64("bits", bits), ir.AttrInt64("block_size", bsize)]
        if request.accuracy_level:
            attrs.append(ir.AttrInt64("accuracy_level", request.accuracy_level))
        new = ir.Node("com.microsoft", "MatMulNBits", inputs, attributes=attrs, name=f"{node.name}_Q{bits}", num_outputs=1)
        replace_node(graph, node, new)
        drop_if_unused(graph, weight)  # frees the float tensor (and, with it, the PyTorch parameter reference)
        if sym and (node.name != HEAD_NODE or not shared_lm_head):
            graph.initializers.pop(values[2].name, None)
    model.opset_imports.setdefault("com.microsoft", 1)
    if count:
        name = getattr(block_quant, "__module__", "").rsplit(".", 1)[-1]
        notes.append(f"{count} MatMuls block-quantized in the graph ({'onnxruntime RTN' if block_quant is ort_block_quant else name})")
    return notes


def quantize_embedding_table(model, *, bits: int, block: int, symmetric: bool) -> list[str]:
    """Untied embeddings: Gather(model.embed_tokens.weight) → GatherBlockQuantized (blocks along hidden).

    onnxruntime's MatMulNBits quantizer handles Gather only at 4 bits; this one also writes 8-bit tables
    (uint8 data, bits=8), the same layout the builder uses for a shared int8 lm_head/embedding table."""
    import onnx_ir as ir

    graph = model.graph
    node = next((n for n in graph if n.op_type == "Gather" and n.inputs[0] is not None
                 and n.inputs[0].name == "model.embed_tokens.weight" and n.inputs[0].const_value is not None), None)
    if node is None:
        return ["embedding table: no float Gather of model.embed_tokens.weight found; left as is"]
    table = node.inputs[0]
    dtype = table.const_value.dtype
    e = table.const_value.numpy().astype(np.float32)
    vocab, hidden = e.shape
    if hidden % block:
        return [f"embedding table kept in float: hidden {hidden} is not a multiple of block {block}"]
    packed, scales, zero_points = ort_block_quant(np.ascontiguousarray(e.T), bits, block, symmetric)
    data = packed.reshape(vocab, hidden * bits // 8)
    if dtype == ir.DataType.FLOAT16:
        scales = scales.astype(np.float16)  # GatherBlockQuantized outputs the scales' type
    if bits == 4:
        zero_points = zero_points.reshape(vocab, -1)
    names = ("model.embed_tokens.weight_Q", "model.embed_tokens.weight_scales", "model.embed_tokens.weight_zp")
    values = [const(name, array) for name, array in zip(names, (data, scales, zero_points))]
    for v in values[:2] + ([] if symmetric else values[2:]):
        graph.register_initializer(v)
    inputs = [values[0], node.inputs[1], values[1]] + ([] if symmetric else [values[2]])
    new = ir.Node("com.microsoft", "GatherBlockQuantized", inputs, name="/model/embed_tokens/GatherBlockQuantized",
                  attributes=[ir.AttrInt64("bits", bits), ir.AttrInt64("block_size", block),
                              ir.AttrInt64("gather_axis", 0), ir.AttrInt64("quantize_axis", 1)], num_outputs=1)
    replace_node(graph, node, new)
    drop_if_unused(graph, table)
    model.opset_imports.setdefault("com.microsoft", 1)
    return [f"embeddings quantized separately to int{bits} (GatherBlockQuantized, block {block}, "
            f"{'sym' if symmetric else 'asym'}): {vocab}x{hidden}"]


def sync_shared_table(model) -> list[str]:
    """Point the builder's shared embedding lookup (Reshape → GatherBlockQuantized) at the lm_head's quantized
    weights as they were really written. The builder wires the lookup by name and with its global block size
    (`lm_head.MatMul.weight_Q{bits}G{int4_block_size}`); an lm_head quantized with its own block size (a recipe
    override) is stored under another name, which would leave the lookup dangling or reading wrong blocks."""
    import onnx_ir as ir

    graph = model.graph
    gather = next((n for n in graph if n.op_type == "GatherBlockQuantized" and n.name.startswith("/model/embed_tokens")), None)
    head = next((n for n in graph if n.op_type == "MatMulNBits" and n.name.startswith(HEAD_NODE)), None)
    if gather is None or head is None or gather.inputs[0] is None or gather.inputs[0].producer() is None:
        return []
    reshape = gather.inputs[0].producer()
    packed, head_block = head.inputs[1], head.attributes["block_size"].as_int()
    if reshape.op_type != "Reshape" or reshape.inputs[0] is packed and gather.attributes["block_size"].as_int() == head_block:
        return []
    reshape.replace_input_with(0, packed)
    gather.attributes["block_size"] = ir.AttrInt64("block_size", head_block)
    return [f"shared embedding table: lookup reads the lm_head's own blocks ({packed.name}, block {head_block})"]
