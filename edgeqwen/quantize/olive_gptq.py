"""GPTQ through Olive's engine (its `Gptq` pass) on the PyTorch checkpoint, before the model builder.

Olive writes the quantized model in its own format (`quantization_config.quant_method = "olive"`:
packed uint8 weights, per-group scales and zero points), which onnxruntime-genai's builder reads
directly into MatMulNBits. The calibration text is local (a JSON-lines file); nothing is fetched.
Verified with olive-ai 0.13.0 + onnxruntime-genai 0.14.1.

Usage (what `edgeqwen build` runs in a child process): python -m edgeqwen.quantize.olive_gptq CONFIG.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ..errors import EdgeQwenError
from ..log import stage_log
from ..export.streaming_quant import apply_overrides
from .child import run_child
from .result_cache import cache_key, cached

# PyTorch module → the builder's ONNX MatMul it becomes (q/k/v are fused into one MatMul there).
_MODULE_TO_NODE = {
    "self_attn.q_proj": "attn/qkv_proj", "self_attn.k_proj": "attn/qkv_proj", "self_attn.v_proj": "attn/qkv_proj",
    "self_attn.o_proj": "attn/o_proj", "mlp.gate_proj": "mlp/gate_proj", "mlp.up_proj": "mlp/up_proj",
    "mlp.down_proj": "mlp/down_proj",
}


def module_overrides(num_layers: int, patterns: dict[str, dict], default_bits: int, block: int, symmetric: bool,
                     notes: list[str]) -> dict[str, dict]:
    """Recipe overrides (globs on the builder's node names) → Olive's per-module overrides, so a recipe's
    mixed precision means the same under GPTQ as under RTN."""
    out: dict[str, dict] = {}
    for i in range(num_layers):
        for module, node in _MODULE_TO_NODE.items():
            name = f"/model/layers.{i}/{node}/MatMul"
            entry = apply_overrides(name, {}, patterns, [])
            olive = {}
            if entry.get("bits", default_bits) != default_bits:
                olive["bits"] = entry["bits"]
            if entry.get("group_size", block) != block:
                olive["group_size"] = entry["group_size"]
            if "scheme" in entry and (entry["scheme"] == "sym") != symmetric:
                olive["symmetric"] = entry["scheme"] == "sym"
            if olive:
                out[f"model.layers.{i}.{module}"] = olive
    notes.extend(f"gptq {name}: override {o}" for name, o in out.items())
    return out


def workflow(model_path: str, passes: dict, data_configs: list, output_dir: str, cache_dir: str,
             device: str = "cpu", execution_provider: str = "CPUExecutionProvider") -> dict:
    """An Olive workflow on a local HF model, run on this machine."""
    return {
        "input_model": {"type": "HfModel", "model_path": model_path},
        "systems": {"local_system": {"type": "LocalSystem",
                                     "accelerators": [{"device": device, "execution_providers": [execution_provider]}]}},
        "data_configs": data_configs,
        "passes": passes,
        "host": "local_system", "target": "local_system",
        "cache_dir": cache_dir, "output_dir": output_dir, "log_severity_level": 1,
    }


def workflow_config(model_path: str, calib_jsonl: str, *, bits: int, group_size: int, symmetric: bool,
                    samples: int, seq_len: int, damp_percent: float, overrides: dict, output_dir: str,
                    cache_dir: str, extra_passes: dict | None = None, **system) -> dict:
    """Local HF model → Gptq (local JSON-lines calibration) [→ extra passes]."""
    passes = {
        "gptq": {
            "type": "Gptq", "bits": bits, "group_size": group_size, "sym": symmetric, "lm_head": False,
            "damp_percent": damp_percent, "overrides": overrides or None, "data_config": "calibration",
        },
        **(extra_passes or {}),
    }
    calibration = {
        "name": "calibration", "type": "HuggingfaceContainer",
        "load_dataset_config": {"data_name": "json", "data_files": calib_jsonl, "split": "train"},
        "pre_process_data_config": {"strategy": "join", "max_seq_len": seq_len, "max_samples": samples,
                                    "add_special_tokens": False},
    }
    return workflow(model_path, passes, [calibration], output_dir, cache_dir, **system)


def run_gptq(config: dict, work: Path, log_path: Path) -> tuple[Path, float]:
    wall = run_child("edgeqwen.quantize.olive_gptq", config, work, log_path, ("Running pass", "finished in"), "olive",
                     "try quantization.algorithm: rtn, or another calibration file")
    model_dir = Path(config["output_dir"]) / "model"
    if not (model_dir / "config.json").exists():
        raise EdgeQwenError("Olive's Gptq pass wrote no model", where=str(log_path), hint="see the log")
    return model_dir, wall


def main(argv: list[str]) -> int:
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(int(os.environ.get("EDGEQWEN_GPTQ_THREADS", "1")))
    from olive.workflows import run

    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def quantize_checkpoint(resolved, ckpt, block: int, symmetric: bool, work: Path, calib_path: Path | None,
                        notes: list[str]) -> tuple[Path, dict]:
    """The build's GPTQ step: check calibration text, run Olive's Gptq, return the quantized checkpoint folder."""
    from .calibration import prepare_calibration

    q = resolved.recipe.quantization
    calib = prepare_calibration(calib_path, ckpt.path, work / "calibration.jsonl", q.calibration.samples,
                                q.calibration.seq_len)
    stage_log(f"        calibration: {calib.samples} × {calib.seq_len} tokens from {calib.source} ({calib.tokens} tokens)")
    overrides = module_overrides(ckpt.config["num_hidden_layers"], {k: v.as_entry() for k, v in q.overrides.items()},
                                 4, block, symmetric, notes)
    config = workflow_config(str(ckpt.path), str(calib.jsonl), bits=4, group_size=block, symmetric=symmetric,
                             samples=calib.samples, seq_len=calib.seq_len, damp_percent=q.calibration.damp_percent,
                             overrides=overrides, output_dir=str(work / "gptq"), cache_dir=str(work / "olive-cache"))
    key = _cache_key(ckpt.path, calib.jsonl, config)
    model_dir, wall = cached("gptq", key, "GPTQ", lambda: run_gptq(config, work, work / "olive.log"))
    notes.append(f"gptq (Olive Gptq pass, damp {q.calibration.damp_percent}) on every decoder-layer linear: "
                 f"{calib.samples} calibration sequences × {calib.seq_len} tokens from {Path(calib.source).name}; "
                 "lm_head and embeddings quantized by RTN in the builder")
    return model_dir, {**calib.as_dict(), "wall_s": round(wall, 2), "olive_overrides": overrides, "cache_key": key}


def _cache_key(model: Path, calib_jsonl: Path, config: dict) -> str:
    settings = {"passes": config["passes"], "data": config["data_configs"][0]["pre_process_data_config"]}
    return cache_key(model, calib_jsonl, settings, "olive-ai")
