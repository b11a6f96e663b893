"""AutoRound (auto-round, the neural-compressor project's rounding optimizer) on the PyTorch checkpoint."""

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="autoround",
    summary="AutoRound signed-gradient rounding (auto-round) on the PyTorch checkpoint, local calibration text",
    stage="checkpoint", extra="autoround", precisions=("int4",),
    takes_overrides=False,  # saved in the GPTQ layout: one bit width for the whole model
    asym_reason="onnxruntime-genai 0.14.1 cannot import symmetric autoround weights (its q/k/v packer needs "
                "zero points)",
    whole_groups=True, low_memory="autoround", calibration=True, cache_package="auto-round",
    checkpoint_quantizer="edgeqwen.quantize.autoround:quantize_checkpoint",
    olive=OliveMapping(refuse="Olive has no AutoRound pass; its Gptq pass (algorithm: gptq) is the nearest equivalent"),
    tune=(TuneCandidate("autoround-asym-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),),
))
