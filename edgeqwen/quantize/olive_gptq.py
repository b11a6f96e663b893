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

from ..architectures import HEAD_NODE, get_architecture
from ..child import calibrated_threads_env, calibration_threads, run_child
from ..errors import EdgeQwenError
from ..log import stage_log
from .request import CheckpointRequest, QuantRequest, Scheme
from .result_cache import cache_key, cached

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers", "olive.workflows")


def module_overrides(request: QuantRequest) -> dict[str, dict]:
    """The request's per-node settings (builder node names) → Olive's per-module overrides, so a recipe's mixed
    precision means the same under GPTQ as under RTN. A node with no module mapping raises."""
    arch = get_architecture(request.architecture)
    out: dict[str, dict] = {}
    for node in request.node_settings:
        if node == HEAD_NODE:
            continue  # lm_head is quantized by the builder, not by the calibrated pass
        entry = request.node_setting(node)
        olive = {}
        if entry.bits != request.bits:
            olive["bits"] = entry.bits
        if entry.group_size != request.block_size:
            olive["group_size"] = entry.group_size
        if (entry.scheme == Scheme.SYM) != request.symmetric:
            olive["symmetric"] = entry.scheme == Scheme.SYM
        if not olive:
            continue
        layer, _, in_layer = node.removeprefix("/model/layers.").removesuffix("/MatMul").partition("/")
        for module in arch.module_for_node("builder", in_layer):
            out[f"model.layers.{layer}.{module}"] = olive
    return dict(sorted(out.items(), key=lambda kv: (int(kv[0].split(".")[2]), kv[0])))


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
    cfg_path = work / "olive_gptq.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    run = run_child("edgeqwen.quantize.olive_gptq", cfg_path, log_path, progress=("Running pass", "finished in"),
                    what="olive", hint="try quantization.algorithm: rtn, or another calibration file",
                    env=calibrated_threads_env(), clean=lambda t: t.split("] ")[-1].replace("\x1b[0m", ""))
    model_dir = Path(config["output_dir"]) / "model"
    if not (model_dir / "config.json").exists():
        raise EdgeQwenError("Olive's Gptq pass wrote no model", where=str(log_path), hint="see the log")
    return model_dir, run.wall_s


def main(argv: list[str]) -> int:
    os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
    import torch

    torch.set_num_threads(int(os.environ["EDGEQWEN_CALIB_THREADS"]))  # set by the build (child.calibrated_threads_env)
    from olive.workflows import run

    run(json.loads(Path(argv[0]).read_text()))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))


def quantize_checkpoint(job: CheckpointRequest) -> tuple[Path, dict, list[tuple[str, str]]]:
    """The build's GPTQ step: check calibration text, run Olive's Gptq, return the quantized checkpoint folder."""
    from .calibration import prepare_calibration

    req, work = job.quant, job.work
    calib = prepare_calibration(job.calibration_text, job.model, work / "calibration.jsonl", job.samples, job.seq_len)
    stage_log(f"        calibration: {calib.samples} × {calib.seq_len} tokens from {calib.source} ({calib.tokens} tokens)")
    overrides = module_overrides(req)
    config = workflow_config(str(job.model), str(calib.jsonl), bits=req.bits, group_size=req.block_size,
                             symmetric=req.symmetric, samples=calib.samples, seq_len=calib.seq_len,
                             damp_percent=job.damp_percent, overrides=overrides,
                             output_dir=str(work / "gptq"), cache_dir=str(work / "olive-cache"))
    key = gptq_cache_key(job.model, calib.jsonl, config)
    model_dir, wall = cached("gptq", key, "GPTQ", lambda: run_gptq(config, work, work / "olive.log"))
    decisions = [("gptq.override", f"gptq {name}: override {o}") for name, o in overrides.items()]
    decisions.append(("gptq", f"gptq (Olive Gptq pass, damp {job.damp_percent}) on every decoder-layer "
                      f"linear: {calib.samples} calibration sequences × {calib.seq_len} tokens from "
                      f"{Path(calib.source).name}; lm_head and embeddings quantized by RTN in the builder"))
    info = {**calib.as_dict(), "wall_s": round(wall, 2), "threads": calibration_threads(), "olive_overrides": overrides,
            "cache_key": key}
    return model_dir, info, decisions


def gptq_cache_key(model: Path, calib_jsonl: Path, config: dict) -> str:
    settings = {"passes": config["passes"], "data": config["data_configs"][0]["pre_process_data_config"]}
    return cache_key(model, calib_jsonl, settings, "olive-ai")
