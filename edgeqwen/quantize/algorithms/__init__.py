"""Built-in quantization algorithms, one module each; importing this package registers them (in this order)."""

from . import rtn, k_quant, gptq, hqq, autoround, rtn_clip  # noqa: F401
