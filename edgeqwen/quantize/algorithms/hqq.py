"""HQQ (half-quadratic quantization, calibration-free): onnxruntime's HQQ quantizer on the exported graph."""

from __future__ import annotations

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="hqq",
    summary="half-quadratic quantization (onnxruntime's HQQ quantizer), float zero points",
    stage="graph", precisions=("int4",), asym_reason="HQQ optimizes a zero point per block (stored as float)", float_zero_points=True, low_memory="rtn",
    graph_quantizer="edgeqwen.quantize.algorithms.hqq:quantize_graph",
    notes=("hqq: float zero points take a slow MatMulNBits path in onnxruntime 1.32 (Qwen2.5-0.5B shape on 2 cores: "
           "4.7 tok/s decode vs 77.8 for rtn); rounding them to integers loses HQQ's gain (tiny-qwen2 KLD 0.054 -> "
           "0.073, rtn 0.061)",),
    olive=OliveMapping(refuse="Olive's ModelBuilder (fp32) → OnnxHqqQuantization is the nearest equivalent (it cannot "
                              "keep lm_head int8 or share the embedding table)"),
    tune=(TuneCandidate("hqq-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),),
))


def quantize_graph(model, request, skip: set[str], notes: list[str]):
    """onnxruntime's HQQ on every MatMul of the default layout (`request`: a QuantRequest); `skip` (lm_head — the shared
    table needs integer zero points — and nodes given other settings) is left float for the shared RTN path. Returns
    the new model."""
    import onnx_ir as ir
    from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

    quant = MatMulNBitsQuantizer(ir.to_proto(model), nodes_to_exclude=sorted(skip),
                                 algo_config=HQQWeightOnlyQuantConfig(block_size=request.block_size, bits=4))
    quant.process()
    model = ir.from_proto(quant.model.model)
    done = [n for n in model.graph if n.op_type == "MatMulNBits"]
    for n in done:  # the HQQ quantizer writes no accuracy level; the target's applies as for RTN
        n.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", request.accuracy_level)
    notes.append(f"hqq (onnxruntime HQQ, block {request.block_size}, float zero points) on {len(done)} MatMuls; "
                 f"rtn on the rest ({', '.join(sorted(skip))})")
    return model
