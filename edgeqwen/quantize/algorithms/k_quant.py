"""llama.cpp-style k-quant search (onnxruntime-genai's builder, `int4_algo_config=k_quant`)."""

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

SPEC = register(AlgorithmSpec(
    name="k_quant",
    summary="k-quant scale search per block (onnxruntime, inside the builder)",
    stage="builder", builder_algo="k_quant",
    # onnxruntime-genai 0.14.1: every k_quant variant writes zero points and quantizes lm_head to 8 bits (block 32)
    asym_reason="k_quant stores zero points (asymmetric) for every block", head_bits=8,
    low_memory="rtn",
    olive=OliveMapping(pre_pass=None),
    tune=(TuneCandidate("kquant-b32", {"block_size": 32, "lm_head": "int8"}),),
))
