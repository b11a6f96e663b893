"""The WebAssembly graph of a web artifact: the decoder with every MatMulNBits as DynamicQuantizeMatMul.

onnxruntime-web 1.31.1's WebAssembly build has no MatMulNBits kernel of its own: every run dequantizes each weight
matrix to fp32 and multiplies that (measured in Node, 2 threads, one 896x4864 matrix at M=1: 7.0-10.7 ms whatever the
bits, block, zero points or accuracy level; the 0.5B shape decodes at 0.3 tok/s on the page). Its int8 GEMM has
WebAssembly SIMD kernels: DynamicQuantizeMatMul (int8 weights per output column, the activations quantized to uint8
per run) takes 0.5-0.7 ms on the same matrix, and fp32 MatMul 0.74 ms at 8x the bytes. So the page's WebAssembly
backend loads this graph (`model.wasm.onnx`), written from the decoder graph: each MatMulNBits node becomes a
DynamicQuantizeMatMul whose int8 weights (symmetric, one scale per output column) come from the original checkpoint's
weights where the build has them (W8A8: the int4 graph's weight error is gone; tiny-qwen2 against the PyTorch
reference, prompt in 16-token passes then one token per pass: KLD 0.0048 and top-1 95.1 % vs the int4 graph's 0.0150
and 90.6 %), else from the int4 weights, dequantized exactly (an int4-only artifact: KLD 0.0175, top-1 89.2 %);
everything else (the table's GatherBlockQuantized, attention, norms) as it was. The build's accuracy stage scores it
against the PyTorch reference with the recipe's gate and drops it where it misses (the page then runs the decoder
graph on WebAssembly, slowly).

The weights are signed int8 (onnxruntime-web's U8S8 kernel is 2.3x its U8U8 one); x86 CPUs without VNNI can saturate
U8S8 products, so a CPU session over this graph sets `session.x64quantprecision` (runner.py), which onnxruntime uses to
take such weights through its exact U8U8 path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import EdgeQwenError
from ..export.graph_edit import load_with_weights, node_attrs, replace_nodes, save_with_weights

WASM_GRAPH = "model.wasm.onnx"
# One pass's activations share one int8 scale (DynamicQuantizeMatMul quantizes its whole input), so the page feeds this
# graph the prompt this many tokens per pass and the accuracy stage scores it the same way. tiny-qwen2/web-int4, KLD
# against the int4 graph over 1024 tokens of the eval text by tokens per pass: 512: 0.0120, 64: 0.0076, 16: 0.0050,
# 4: 0.0029, 1 (decoding): 0.0017; the requantized weights alone (fp32 activations): 0.0004.
PASS_TOKENS = 16
WASM_HEAD = "lm_head.wasm.onnx"  # its scoring head where the decoder's head is pruned (export/scoring_head.py)
OP = "DynamicQuantizeMatMul"


def _int8_columns(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """[K, N] float -> int8 [K, N] and one scale per column (symmetric, +-127; an all-zero column gets scale 1)."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    q = np.clip(np.rint(w / scale), -127, 127).astype(np.int8)
    return q, scale


def matmulnbits_weight(node, values: dict[str, np.ndarray]) -> np.ndarray:
    """The [K, N] fp32 weights a MatMulNBits node computes with (packed B, scales, optional zero points)."""
    from ..quantize.graph_quant import ort_block_dequant

    a = node_attrs(node)
    k, n, bits, block = int(a["K"]), int(a["N"]), int(a["bits"]), int(a["block_size"])
    if bits not in (4, 8):
        raise EdgeQwenError(f"MatMulNBits {node.name!r} has {bits}-bit weights; the WebAssembly graph reads 4 and 8",
                            where=node.name, hint="build the web target with int4/int8 weights")
    ins = list(node.input) + [""] * 6
    if ins[4]:
        raise EdgeQwenError(f"MatMulNBits {node.name!r} has a g_idx input (act-order), which the WebAssembly graph "
                            "does not read", where=node.name, hint="quantize without desc_act / act-order")
    packed = values[ins[1]]
    k_blocks = -(-k // block)
    packed = packed.reshape(n, k_blocks, -1)
    scales = values[ins[2]].astype(np.float32).reshape(n, k_blocks)
    zp = values.get(ins[3]) if ins[3] else None
    if zp is not None and zp.dtype != np.uint8:
        raise EdgeQwenError(f"MatMulNBits {node.name!r} has {zp.dtype} zero points; the WebAssembly graph reads packed "
                            "uint8 ones", where=node.name, hint="quantize with integer zero points")
    zero_points = zp.reshape(n, -1) if zp is not None else np.zeros((n, 1), np.uint8)
    return ort_block_dequant(packed, scales, zero_points, bits, block, zp is None, k)


def checkpoint_weights(checkpoint: Path, architecture: str, exporter: str = "builder"):
    """node name -> its [K, N] fp32 weights from the checkpoint (q/k/v concatenated as the builder fuses them; a tied
    head is the embedding table), or None where the checkpoint has no such tensors."""
    from ..architectures import get_architecture
    from ..export.fuse import FUSED
    from ..export.head_sym import HEAD_PREFIX, checkpoint_head
    from ..quantize.gptq_stream import Shards

    shards = Shards(checkpoint)
    spec = get_architecture(architecture)

    def weights(node: str) -> np.ndarray | None:
        if node.startswith(HEAD_PREFIX):
            names = [n for n in (checkpoint_head(shards),) if n]
        else:
            parts = node.split("/")  # /model/layers.{i}/{node in layer}/MatMul(NBits)
            if len(parts) < 4 or not parts[2].startswith("layers."):
                return None
            in_layer = "/".join(parts[3:-1])
            try:  # a fused node (export/fuse.py) holds its parts' columns in order
                modules = [m for part in FUSED.get(in_layer, (in_layer,)) for m in spec.module_for_node(exporter, part)]
            except KeyError:
                return None
            names = [f"model.{parts[2]}.{m}.weight" for m in modules]
        if not names or any(n not in shards.where for n in names):
            return None
        return np.concatenate([shards.get(n).float().numpy().T for n in names], axis=1)

    return weights


def write_wasm_graph(artifact: Path, decoder: str, weights_of=None) -> dict:
    """Write `model.wasm.onnx` (+ `.data`) beside `decoder` in `artifact`; returns what it did (for the manifest).
    `weights_of` (checkpoint_weights): a node's original [K, N] weights, quantized to int8 in place of the node's
    int4/int8 ones; a node it has none for (or of another shape) keeps its own, dequantized."""
    from onnx import helper, numpy_helper

    src = artifact / decoder
    model, _ = load_with_weights(src)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    nodes, new_inits, replaced, bytes_in, original = [], [], 0, 0, 0
    for node in graph.node:
        if node.op_type != "MatMulNBits":
            nodes.append(node)
            continue
        ins = list(node.input) + [""] * 6
        bytes_in += sum(len(inits[name].raw_data) for name in ins[1:4] if name)
        a = node_attrs(node)
        w = weights_of(node.name) if weights_of is not None else None
        if w is not None and w.shape == (a["K"], a["N"]):
            original += 1
        else:  # the node's own weights, dequantized (only where the checkpoint has none of its shape)
            w = matmulnbits_weight(node, {n: numpy_helper.to_array(inits[n]) for n in ins[1:4] if n})
        q, scale = _int8_columns(w)
        del w
        base = node.name.replace("/", "_").strip("_") or f"matmul{replaced}"
        new_inits += [numpy_helper.from_array(q, f"{base}.wasm_int8"),
                      numpy_helper.from_array(scale, f"{base}.wasm_scale")]
        # DynamicQuantizeMatMul: A, B, b_scale, b_zero_point (none: symmetric), bias
        dq_in = [ins[0], f"{base}.wasm_int8", f"{base}.wasm_scale"] + (["", ins[5]] if ins[5] else [])
        nodes.append(helper.make_node(OP, dq_in, list(node.output), name=node.name, domain="com.microsoft"))
        replaced += 1
    if not replaced:
        raise EdgeQwenError(f"{decoder} has no MatMulNBits node: nothing for the WebAssembly graph to replace",
                            where=str(src), hint="the web target's graphs are int4; check the recipe's precision")
    replace_nodes(graph, nodes, new_inits)
    data = WASM_GRAPH + ".data"
    save_with_weights(model, artifact / WASM_GRAPH, data)
    note = None
    if (artifact / "lm_head.onnx").exists():  # a pruned head: accuracy checks score every position through this
        from ..export.scoring_head import write_scoring_head

        note = write_scoring_head(artifact, WASM_GRAPH)
    int8_bytes = sum(int(np.prod(t.dims)) for t in new_inits if t.name.endswith(".wasm_int8"))
    return {"file": WASM_GRAPH, "op": OP, "replaced_nodes": replaced, "from_checkpoint": original,
            "int8_weight_mb": round(int8_bytes / 1e6, 2),
            "matmulnbits_weight_mb": round(bytes_in / 1e6, 2),
            "bytes": (artifact / WASM_GRAPH).stat().st_size + (artifact / data).stat().st_size,
            **({"scoring_head": note} if note else {})}


def drop_wasm_graph(artifact: Path) -> None:
    """Remove the WebAssembly graph, its data and its scoring head."""
    for p in (artifact / WASM_GRAPH, artifact / (WASM_GRAPH + ".data"), artifact / WASM_HEAD):
        p.unlink(missing_ok=True)
