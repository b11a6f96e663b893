"""GPTQ on the PyTorch checkpoint, one decoder layer at a time, calibrated on local text (see gptq_stream.py; it
matches Olive's `Gptq` pass per matrix and writes Olive's checkpoint format)."""

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="gptq",
    summary="GPTQ (layer-streamed) on the PyTorch checkpoint, local calibration text",
    stage="checkpoint", extra="gptq", precisions=("int4",),
    # symmetric weights go to the builder with their zero points spelled out (the middle level: onnxruntime-genai
    # 0.14.1 packs pre-quantized q/k/v by concatenating zero points); post-export drops them (export/zero_points.py)
    whole_groups=True,  # Olive's GPTQ asserts in_features % group_size == 0
    low_memory="gptq", calibration=True, cache_package="olive-ai",
    checkpoint_quantizer="edgeqwen.quantize.gptq_stream:quantize_checkpoint",
    olive=OliveMapping(pre_pass="Gptq"),
    tune=(TuneCandidate("gptq-asym-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),
          TuneCandidate("gptq-asym-b64-int8head", {"symmetric": False, "block_size": 64, "lm_head": "int8"})),
))
