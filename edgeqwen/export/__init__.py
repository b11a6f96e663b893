"""Exporters: checkpoint → ONNX graph with KV cache (+ weight quantization done in the same pass)."""
