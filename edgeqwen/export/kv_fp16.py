"""The KV cache in fp16 on an fp32 graph: half the cache's bytes, the rest of the graph unchanged.

The builder's CPU graphs keep activations and the KV cache in fp32. onnxruntime's GroupQueryAttention takes query,
key, value, the past/present cache and the rotary caches in one type, so each layer's attention runs in fp16: its
packed q/k/v input is cast to fp16 before it, its output back to fp32 after it, the cos/sin caches are stored once
more in fp16, and the graph's past_key_values.* inputs and present.* outputs become float16. The runner and the batch
engine allocate the cache in the graph's own type (Runner.kv_dtype), and onnxruntime-genai reads it from the graph.

What it costs and buys (benchmarks/kv_fp16_cost.py): the cache's memory halves — on Qwen3-0.6B's shape (8 KV heads of
128) a 4096-token context takes 0.47 GB instead of 0.94 GB —; onnxruntime's CPU attention in fp16 is slower than in
fp32 on x86 (no fp16 arithmetic there: 1.3-2.1x per attention node; the 0.5B shape's decode 0.71-0.92x), so it is a
memory setting, not a speed one. Accuracy: the trained tiny Qwen2 with fp32 weights (the cache all that differs) KLD
2e-6 against PyTorch; its int4 build's KLD unchanged (0.01366 vs 0.01368).
"""

from __future__ import annotations

import numpy as np

from .graph_edit import replace_nodes

ROTARY_INPUTS = (7, 8)  # GroupQueryAttention's cos_cache, sin_cache
PACKED_INPUTS = (0, 1, 2)  # query (packed q/k/v in the builder's graphs), key, value


def kv_cache_fp16(model) -> str | None:
    """Edit `model` (its weights in memory; graph_edit.edit_graph) so its KV cache is fp16: a note, or None where its
    graph has no fp32 GroupQueryAttention cache to change (fp16 graphs already have an fp16 cache)."""
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    past = [v for v in graph.input if v.name.startswith("past_key_values.")]
    if not past or any(v.type.tensor_type.elem_type != TensorProto.FLOAT for v in past):
        return None
    attention = [n for n in graph.node if n.op_type == "GroupQueryAttention"]
    if not attention:
        return None
    inits = {t.name: t for t in graph.initializer}
    nodes, added, cast = [], [], {}

    def fp16_of(name: str, where: str) -> str:
        if name in cast:
            return cast[name]
        if name in inits:  # the rotary caches: stored once more in fp16
            half = numpy_helper.from_array(numpy_helper.to_array(inits[name]).astype(np.float16), f"{name}_fp16")
            added.append(half)
        else:
            half = helper.make_node("Cast", [name], [f"{name}/fp16"], name=f"{where}/Cast_fp16", to=TensorProto.FLOAT16)
            nodes.append(half)
        cast[name] = f"{name}_fp16" if name in inits else f"{name}/fp16"
        return cast[name]

    for node in graph.node:
        if node.op_type != "GroupQueryAttention":
            nodes.append(node)
            continue
        ins = list(node.input)
        for i in (*PACKED_INPUTS, *ROTARY_INPUTS):
            if i < len(ins) and ins[i]:
                ins[i] = fp16_of(ins[i], node.name)
        out = node.output[0]
        half = helper.make_node("GroupQueryAttention", ins, [f"{out}/fp16", *node.output[1:]], name=node.name,
                                domain=node.domain)
        half.attribute.extend(node.attribute)
        nodes.append(half)
        nodes.append(helper.make_node("Cast", [f"{out}/fp16"], [out], name=f"{node.name}/Cast_fp32",
                                      to=TensorProto.FLOAT))
    replace_nodes(graph, nodes, added)
    for v in (*graph.input, *graph.output):
        if v.name.startswith(("past_key_values.", "present.")):
            v.type.tensor_type.elem_type = TensorProto.FLOAT16
    kept = [v for v in graph.value_info if not v.name.startswith("present.")]  # typed fp32 by the exporter
    del graph.value_info[:]
    graph.value_info.extend(kept)
    return (f"KV cache in fp16: {len(attention)} GroupQueryAttention nodes run in fp16 between casts, "
            f"{len(past)} past inputs and their present outputs float16")
