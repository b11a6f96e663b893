"""What Ollama's listing routes say about an artifact: size, digest, family, quantization, capabilities."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone
from pathlib import Path


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def details(path: Path) -> dict:
    manifest = _read(path / "manifest.json")
    family = (_read(path / "genai_config.json").get("model") or {}).get("type", "")
    precision = (manifest.get("recipe") or {}).get("precision", "")
    return {"parent_model": "", "format": "onnx", "family": family, "families": [family] if family else [],
            "parameter_size": "", "quantization_level": str(precision).upper()}


def model_entry(m) -> dict:
    manifest = m.path / "manifest.json"
    try:
        digest = hashlib.sha256(manifest.read_bytes()).hexdigest()
    except OSError:
        digest = ""
    size = int(_read(manifest).get("size_bytes") or 0)
    return {"name": m.name, "model": m.name, "modified_at": datetime.fromtimestamp(m.created, timezone.utc).isoformat(),
            "size": size, "digest": digest, "details": details(m.path)}


def model_info(path: Path, runner) -> dict:
    family = (_read(path / "genai_config.json").get("model") or {}).get("type", "")
    return {"general.architecture": family, f"{family}.context_length": runner.context_length,
            f"{family}.block_count": runner.num_layers, "general.file_type": "onnx"}


def template_capabilities(runner) -> list[str]:
    caps = ["completion"]
    template = runner.chat_template or ""
    if "tools" in template:
        caps.append("tools")
    if runner.think_ids[0] is not None:
        caps.append("thinking")
    if runner.vision is not None:
        caps.append("vision")
    return caps
