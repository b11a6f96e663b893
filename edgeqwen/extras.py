"""Install profiles: the runtime (`pip install edgeqwen`) and the extras that add the build stack. A verb that needs
an extra checks for it before any work and names the extra to install."""

from __future__ import annotations

import importlib.util

from .errors import EdgeQwenError

EXTRA_MODULES = {
    "build": ("torch", "transformers", "onnxruntime_genai", "onnx", "onnx_ir", "safetensors"),
    "core": ("onnxscript", "psutil", "huggingface_hub"),
    "gptq": ("olive", "datasets"),
    "autoround": ("auto_round",),
    "portable": ("optimum.exporters.onnx",),
    "plots": ("matplotlib",),
    "genai": ("onnxruntime_genai",),
    "ray": ("ray",),
    "test": ("openai",),
}


def extra_for_module(name: str) -> str | None:
    """The extra that brings a top-level module (the first listed wins: build before its parts)."""
    for extra, modules in EXTRA_MODULES.items():
        if name in {m.split(".")[0] for m in modules}:
            return "build" if extra == "core" else extra
    return None


def _present(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a parent package is missing
        return False


def require(extra: str, what: str) -> None:
    missing = [m for m in EXTRA_MODULES[extra] if not _present(m)]
    if missing:
        raise EdgeQwenError(f"{what} needs the {extra!r} extra ({', '.join(missing)} not installed)",
                            hint=f"pip install 'edgeqwen[{extra}]'")
