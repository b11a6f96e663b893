"""Torch-free runtime: onnxruntime + numpy + tokenizers (+ jinja2 for chat templates)."""

from .runner import Record, Result, Runner, RunnerError, Sampling, check_artifact

__all__ = ["Record", "Result", "Runner", "RunnerError", "Sampling", "check_artifact"]
