"""An int8 lm_head without zero points: symmetric, quantized again from the checkpoint's weights.

onnxruntime's 8-bit MatMulNBits kernel is slower with a zero-point input than without: the Qwen2.5-0.5B shape's default
(gate/up fused), its 151,936-wide int8 head taken to symmetric, decodes 1.06x and 1.10x as fast in two interleaved
7-round runs (2 cores, AVX-512 VNNI). The builder quantizes the head with the recipe's `symmetric` (asymmetric for
GPTQ: its layers need zero points); an 8-bit head does not (int8 steps are fine either way: symmetric spends one of 256
levels). So the head's weights are quantized again, symmetric, from the export's input checkpoint (the original
weights: GPTQ leaves the head alone), and the zero-point input leaves the head node — and the tied embedding table's
GatherBlockQuantized, which reads the same bytes and whose default zero point for 8-bit data is 128, as MatMulNBits'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..architectures import HEAD_NODE

HEAD_PREFIX = HEAD_NODE.rsplit("/", 1)[0] + "/"  # /lm_head/: the builder names it MatMul_Q8 once quantized


def _attrs(node) -> dict:
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def symmetric_int8_head(artifact: Path, checkpoint: Path, graph: str = "model.onnx") -> str | None:
    """Rewrite `artifact/graph`'s 8-bit lm_head (with zero points) as symmetric int8 from `checkpoint`'s head weights;
    a note, or None where there is no such head. Rewrites the graph's external data file: graphs reading it by offset
    (lm_head.onnx) come after."""
    import onnx
    from onnx import numpy_helper

    from ..quantize.gptq_stream import Shards
    from ..quantize.graph_quant import ort_block_quant

    path = artifact / graph
    model = onnx.load(str(path), load_external_data=False)
    head = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(HEAD_PREFIX)), None)
    if head is None or len(head.input) < 4 or not head.input[3] or _attrs(head)["bits"] != 8:
        return None
    a = _attrs(head)
    shards = Shards(checkpoint)
    name = next((n for n in ("lm_head.weight", "model.embed_tokens.weight") if n in shards.where), None)
    if name is None:
        return None
    w = shards.get(name).float().numpy()  # [N, K]
    if w.shape != (a["N"], a["K"]):
        return None
    locations = {e.value for t in model.graph.initializer for e in t.external_data if e.key == "location"}
    onnx.load_external_data_for_model(model, str(artifact))
    packed, scales, _ = ort_block_quant(np.ascontiguousarray(w.T), 8, a["block_size"], True)
    del w
    inits = {t.name: t for t in model.graph.initializer}
    weight, scale, zp = head.input[1], head.input[2], head.input[3]
    old_scale = numpy_helper.to_array(inits[scale])
    inits[weight].CopyFrom(numpy_helper.from_array(packed.reshape(numpy_helper.to_array(inits[weight]).shape), weight))
    inits[scale].CopyFrom(numpy_helper.from_array(scales.reshape(old_scale.shape).astype(old_scale.dtype), scale))
    readers = [n for n in model.graph.node if zp in n.input]
    for n in readers:  # the head and a tied table's GatherBlockQuantized: their zero points are the last input
        if list(n.input).index(zp) != len(n.input) - 1:
            raise RuntimeError(f"{path}: {n.name} reads the head's zero points {zp} before other inputs")
        del n.input[-1]
    kept = [t for t in model.graph.initializer if t.name != zp]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    data = sorted(locations)[0] if locations else graph + ".data"
    for loc in locations:  # onnx appends to an existing data file: every tensor is in memory now
        (artifact / loc).unlink()
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data,
                    size_threshold=1024)
    (artifact / data).chmod(0o644)
    tied = [n.name for n in readers if n is not head]
    return (f"lm_head int8 symmetric (no zero points: onnxruntime's faster 8-bit kernel), quantized again from "
            f"{name}" + (f"; the tied table ({', '.join(tied)}) reads the same bytes" if tied else ""))
