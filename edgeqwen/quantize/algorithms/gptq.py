"""GPTQ on the PyTorch checkpoint, one decoder layer at a time, calibrated on local text (see gptq_stream.py; it
matches Olive's `Gptq` pass per matrix and writes Olive's checkpoint format)."""

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="gptq",
    summary="GPTQ (layer-streamed) on the PyTorch checkpoint, local calibration text",
    stage="checkpoint", extra="gptq", precisions=("int4",),
    # onnxruntime-genai 0.14.1 packs pre-quantized q/k/v by concatenating their zero points: symmetric weights crash it
    asym_reason="onnxruntime-genai 0.14.1 cannot import symmetric gptq weights (its q/k/v packer needs zero points)",
    whole_groups=True,  # Olive's GPTQ asserts in_features % group_size == 0
    low_memory="gptq", calibration=True, cache_package="olive-ai",
    checkpoint_quantizer="edgeqwen.quantize.gptq_stream:quantize_checkpoint",
    olive=OliveMapping(pre_pass="Gptq"),
    tune=(TuneCandidate("gptq-asym-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),
          TuneCandidate("gptq-asym-b64-int8head", {"symmetric": False, "block_size": 64, "lm_head": "int8"})),
))
