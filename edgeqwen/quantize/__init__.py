"""Calibrated weight quantization that runs on the PyTorch model before export (GPTQ through Olive)."""
