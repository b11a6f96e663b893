"""`edgeqwen olive-config RECIPE`: the equivalent Olive workflow JSON, for teams that run Olive.

Mapping (olive-ai 0.13.0 pass names):
- algorithm gptq → `Gptq` (local calibration JSON-lines, overrides per module) → `ModelBuilder`
- rtn with per-layer overrides, or int8 → `Rtn` (PyTorch, overrides per module) → `ModelBuilder`
- rtn / k_quant otherwise → `ModelBuilder` alone (int4_algo_config, block, symmetry, accuracy level)
ModelBuilder gets the same builder options edgeqwen's plan uses (shared int8/int4 embedding table,
excluded lm_head). What Olive cannot express is listed in the returned notes, not silently dropped.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..checkpoint import resolve_checkpoint
from ..export.builder import plan_export
from ..quantize.calibration import prepare_calibration
from ..quantize.olive_gptq import module_overrides, workflow_config
from ..recipe import Algorithm, load_recipe
from ..targets import Precision

_EP = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "webgpu": "WebGpuExecutionProvider"}
_BUILDER_TOP_LEVEL = ("int4_block_size", "int4_is_symmetric", "int4_accuracy_level", "int4_algo_config",
                      "int4_nodes_to_exclude", "int4_op_types_to_quantize")


def olive_workflow(recipe: str, model: str | None, output_dir: str, calib: Path | None = None,
                   calib_out: Path | None = None) -> tuple[dict, list[str]]:
    resolved = load_recipe(recipe)
    ckpt = resolve_checkpoint(model or resolved.recipe.model)
    q = resolved.recipe.quantization
    tmp = Path(tempfile.mkdtemp(prefix="edgeqwen-olive-"))
    plan = plan_export(resolved, ckpt, tmp / "unused", tmp / "cache")
    notes = list(plan.decisions)
    quantized = resolved.recipe.precision in (Precision.INT4, Precision.INT8)

    mb = {"type": "ModelBuilder", "precision": plan.builder_precision}
    extra = {k: v for k, v in plan.extra_options.items() if k not in ("hf_token", "hf_remote")}
    for key in _BUILDER_TOP_LEVEL:
        if key in extra:
            mb[key] = extra.pop(key)
    if plan.quantize_gather:
        mb["int4_op_types_to_quantize"] = ["MatMul", "Gather"]
    if extra:
        mb["extra_options"] = {k: (str(v).lower() if isinstance(v, bool) else v) for k, v in extra.items()}

    pre: dict = {}
    patterns = {k: v.as_entry() for k, v in q.overrides.items()}
    layers = ckpt.config["num_hidden_layers"]
    if quantized and plan.algorithm == Algorithm.GPTQ.value:
        cal = q.calibration
        calib_out = calib_out or Path(output_dir) / "calibration.jsonl"
        cset = prepare_calibration(calib, ckpt.path, calib_out, cal.samples, cal.seq_len)
        notes.append(f"calibration: {cset.samples} × {cset.seq_len} tokens from {cset.source} written to {calib_out}")
        overrides = module_overrides(layers, patterns, 4, plan.block_size, plan.symmetric, [])
        cfg = workflow_config(str(ckpt.path), str(calib_out), bits=4, group_size=plan.block_size,
                              symmetric=plan.symmetric, samples=cset.samples, seq_len=cset.seq_len,
                              damp_percent=cal.damp_percent, overrides=overrides, output_dir=output_dir,
                              cache_dir=str(Path(output_dir) / "cache"), extra_passes={"model_builder": mb})
    else:
        if quantized and (patterns or plan.matmul_bits == 8):
            pre["rtn"] = {"type": "Rtn", "bits": plan.matmul_bits, "group_size": plan.block_size,
                          "sym": plan.symmetric, "lm_head": False,
                          "overrides": module_overrides(layers, patterns, plan.matmul_bits, plan.block_size,
                                                        plan.symmetric, []) or None}
            notes.append(f"decoder-layer linears quantized by Olive's Rtn pass ({plan.matmul_bits}-bit"
                         f"{', per-layer overrides' if patterns else ''}) before ModelBuilder, which reads them as "
                         "pre-quantized weights")
        if q.algorithm == Algorithm.K_QUANT and pre:
            notes.append("k_quant with overrides/int8 is expressed as Rtn: Olive has no per-module k_quant")
        cfg = workflow_config(str(ckpt.path), "", bits=4, group_size=plan.block_size, symmetric=plan.symmetric,
                              samples=1, seq_len=16, damp_percent=0.01, overrides={}, output_dir=output_dir,
                              cache_dir=str(Path(output_dir) / "cache"), extra_passes={**pre, "model_builder": mb})
        del cfg["passes"]["gptq"]
        cfg["data_configs"] = []
    ep = _EP[resolved.target.execution_provider.value]
    device = "gpu" if ep != "CPUExecutionProvider" else "cpu"
    cfg["systems"]["local_system"]["accelerators"] = [{"device": device, "execution_providers": [ep]}]
    notes.append("edgeqwen's packaging (genai_config fix-ups, manifest, accuracy gate, runner) is not part of the Olive run")
    return cfg, notes


def cmd_olive_config(args) -> int:
    out = Path(args.output) if args.output else None
    cfg, notes = olive_workflow(args.recipe, args.model, args.olive_output,
                                calib=Path(args.calib) if args.calib else None,
                                calib_out=(out.parent / "calibration.jsonl") if out else None)
    text = json.dumps(cfg, indent=2)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text + "\n")
        print(f"wrote {out}; run it with: OLIVE_DISABLE_TELEMETRY=1 olive run --config {out}")
    else:
        print(text)
    for n in notes:
        print(f"note: {n}", flush=True)
    return 0


def add_olive_config_parser(sub) -> None:
    p = sub.add_parser("olive-config", help="write the Olive workflow JSON equivalent to a recipe")
    p.add_argument("recipe")
    p.add_argument("--model", help="local checkpoint folder or hub id (default: the recipe's model)")
    p.add_argument("-o", "--output", help="JSON file to write (default: print)")
    p.add_argument("--olive-output", default="olive-out", help="the workflow's output_dir (default: olive-out)")
    p.add_argument("--calib", help="calibration text for gptq recipes (default: the packaged text)")
    p.set_defaults(fn=cmd_olive_config)
