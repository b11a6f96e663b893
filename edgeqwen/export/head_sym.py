"""An int8 lm_head without zero points: symmetric, quantized again from the checkpoint's weights.

onnxruntime's 8-bit MatMulNBits kernel reads the head faster without a zero-point input (probed per node); on the whole
Qwen2.5-0.5B shape's default (gate/up fused) the gain is small: 1.011x vs 1.022x for the fused artifact against the
unfused one, decode in fresh processes alternated over 8 rounds (benchmarks/ab_decode.py; 2 cores, AVX-512 VNNI),
within the run-to-run noise. The builder quantizes the head with the recipe's `symmetric` (asymmetric for
GPTQ: its layers need zero points); an 8-bit head does not (int8 steps are fine either way: symmetric spends one of 256
levels). So the head's weights are quantized again, symmetric, from the export's input checkpoint (the original
weights: GPTQ leaves the head alone), and the zero-point input leaves the head node — and the tied embedding table's
GatherBlockQuantized, which reads the same bytes and whose default zero point for 8-bit data is 128, as MatMulNBits'.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..architectures import HEAD_NODE
from .graph_edit import node_attrs

HEAD_PREFIX = HEAD_NODE.rsplit("/", 1)[0] + "/"  # /lm_head/: the builder names it MatMul_Q8 once quantized
HEAD_TENSORS = ("lm_head.weight", "model.embed_tokens.weight")  # a checkpoint's head: the first it has (tied: table)


def checkpoint_head(shards) -> str | None:
    """The name of a checkpoint's lm_head weights (gptq_stream.Shards): its own, or a tied model's embedding table."""
    return next((n for n in HEAD_TENSORS if n in shards.where), None)


def checkpoint_head_weights(checkpoint: Path, shape: tuple[int, int]) -> tuple[str | None, np.ndarray | None]:
    """(name, float32 [N, K] weights) of a checkpoint's lm_head (`checkpoint_head`); the weights None where they are
    not `shape`, both None where the checkpoint has no head."""
    from ..quantize.gptq_stream import Shards

    shards = Shards(checkpoint)
    name = checkpoint_head(shards)
    if name is None:
        return None, None
    w = shards.get(name).float().numpy()
    return name, (w if w.shape == tuple(shape) else None)


def symmetric_int8_head(model, checkpoint: Path) -> str | None:
    """Rewrite `model`'s 8-bit lm_head with zero points (its weights in memory; graph_edit.edit_graph) as symmetric
    int8 from `checkpoint`'s head weights: a note, or None where there is no such head."""
    from onnx import numpy_helper

    from ..quantize.graph_quant import ort_block_quant

    head = next((n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith(HEAD_PREFIX)), None)
    if head is None or len(head.input) < 4 or not head.input[3] or node_attrs(head)["bits"] != 8:
        return None
    a = node_attrs(head)
    name, w = checkpoint_head_weights(checkpoint, (a["N"], a["K"]))
    if w is None:
        return None
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
            raise RuntimeError(f"{n.name} reads the head's zero points {zp} before other inputs")
        del n.input[-1]
    kept = [t for t in model.graph.initializer if t.name != zp]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    tied = [n.name for n in readers if n is not head]
    return (f"lm_head int8 symmetric (no zero points: onnxruntime's faster 8-bit kernel), quantized again from "
            f"{name}" + (f"; the tied table ({', '.join(tied)}) reads the same bytes" if tied else ""))
