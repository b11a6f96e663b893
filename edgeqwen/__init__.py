"""edgeqwen: small Qwen models → accuracy-checked ONNX artifacts for edge devices."""

__version__ = "0.1.0"
