"""Round-to-nearest with min/max per block: onnxruntime's quantizer inside the builder, edgeqwen's shared
block quantizer on the low-memory and portable paths."""

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="rtn",
    summary="round-to-nearest, min/max per block (onnxruntime's quantizer)",
    stage="builder", builder_algo="rtn", low_memory="rtn", portable=True,
    olive=OliveMapping(pre_pass="Rtn"),  # used when overrides or int8 need per-module bits; else ModelBuilder alone
    tune=(
        TuneCandidate("rtn-sym-b32-int4head", {"symmetric": True, "block_size": 32, "lm_head": "same"}),
        TuneCandidate("rtn-asym-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),
        TuneCandidate("rtn-asym-b16-int8head", {"symmetric": False, "block_size": 16, "lm_head": "int8"}),
        TuneCandidate("rtn-asym-b64-int8head", {"symmetric": False, "block_size": 64, "lm_head": "int8"}),
        TuneCandidate("rtn-asym-b32-int4head", {"symmetric": False, "block_size": 32, "lm_head": "same"}),
    ),
))
