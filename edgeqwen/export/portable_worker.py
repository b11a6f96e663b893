"""The portable exporter, in its own process: optimum-onnx export (standard ONNX ops, past KV) →
onnxruntime's transformer optimizer (fusions) → the same block quantizer as the builder path.

Writes model.onnx(+.data), genai_config.json and tokenizer files (from the builder's config-only
mode), and portable_report.json: operator histograms before/after fusion, the fusions that fired,
and the fused-vs-unfused logits difference on a fixed input.

Usage: python -m edgeqwen.export.portable_worker JOB.json
"""

from __future__ import annotations

import collections
import json
import sys
from pathlib import Path

import numpy as np

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers", "onnx", "onnx_ir", "onnxruntime", "onnxruntime.transformers.optimizer",
           "optimum.exporters.onnx")


def op_histogram(model) -> dict[str, int]:
    counts = collections.Counter(n.op_type for n in model.graph.node)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _logits(path: Path, cfg: dict, ids: np.ndarray) -> np.ndarray:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # compare graphs, not ORT's own fusions
    sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "position_ids": np.arange(ids.shape[1])[None]}
    empty = np.zeros((1, cfg["num_key_value_heads"], 0, head_dim), np.float32)
    for i in range(cfg["num_hidden_layers"]):
        feed[f"past_key_values.{i}.key"] = empty
        feed[f"past_key_values.{i}.value"] = empty
    names = {i.name for i in sess.get_inputs()}
    return sess.run(["logits"], {k: v for k, v in feed.items() if k in names})[0]


def fold_constant_transposes(model) -> list[str]:
    """optimum ties lm_head to the embedding table through Transpose(table): make it a constant weight so the
    quantizer sees lm_head as an ordinary MatMul (the float table is dropped once both are quantized)."""
    import onnx_ir as ir

    from edgeqwen.quantize.ir_edit import const, drop_if_unused

    notes = []
    for node in list(model.graph):
        if node.op_type != "Transpose" or node.inputs[0] is None or node.inputs[0].const_value is None:
            continue
        perm = node.attributes.get("perm")
        arr = node.inputs[0].const_value.numpy()
        arr = np.ascontiguousarray(np.transpose(arr, perm.as_ints() if perm is not None else None))
        name = node.outputs[0].name
        value = const(name + "_folded", arr)
        model.graph.register_initializer(value)
        ir.convenience.replace_all_uses_with(node.outputs[0], value)
        source = node.inputs[0]
        model.graph.remove(node, safe=True)
        drop_if_unused(model.graph, source)
        notes.append(f"folded Transpose({source.name}) into a constant ({name}) so it can be quantized")
    return notes


def trim_rotary_caches(model, context: int) -> list[str]:
    """The RotaryEmbedding fusion writes cos/sin caches for 131072 positions (16 MB for head_dim 32 alone);
    keep the artifact's context."""
    import onnx_ir as ir

    notes = []
    for name in ("cos_cache", "sin_cache"):
        v = model.graph.initializers.get(name)
        if v is None or v.const_value is None or v.shape[0] <= context:
            continue
        arr = np.ascontiguousarray(v.const_value.numpy()[:context])
        notes.append(f"{name}: {v.shape[0]} -> {context} positions (the artifact's context)")
        v.const_value = ir.Tensor(arr, name=name)
        v.shape = ir.Shape(arr.shape)
    return notes


def _export_and_fuse(job, cfg: dict, work: Path, static_shapes: bool) -> tuple[Path, dict, dict, dict, float]:
    """optimum-onnx's export, then onnxruntime's fusions (skipped for static NPU graphs, which keep standard ops).
    Returns the graph to quantize, the fusion counts, op histograms before/after and the fused-vs-unfused logit diff."""
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model
    from optimum.exporters.onnx import main_export

    print("Exporting with optimum-onnx (text-generation-with-past)", flush=True)
    main_export(job.input, output=str(work / "exported"), task="text-generation-with-past", device="cpu",
                do_validation=False)
    exported = work / "exported" / "model.onnx"
    before = op_histogram(onnx.load(str(exported), load_external_data=False))
    if static_shapes:
        # NPU graphs keep standard operators: onnxruntime's fusions produce com.microsoft contrib ops.
        print("Fusion skipped: the target compiles standard ONNX operators only", flush=True)
        return exported, {}, before, before, 0.0
    print("Fusing with onnxruntime.transformers.optimizer", flush=True)
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    opt = optimize_model(str(exported), model_type="gpt2", num_heads=cfg["num_attention_heads"],
                         hidden_size=cfg["num_attention_heads"] * head_dim, opt_level=0)
    fused_stats = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
    fused_path = work / "fused" / "model.onnx"
    fused_path.parent.mkdir(parents=True, exist_ok=True)
    opt.save_model_to_file(str(fused_path), use_external_data_format=True)
    after = op_histogram(onnx.load(str(fused_path), load_external_data=False))
    ids = (np.arange(1, 17, dtype=np.int64) * 37 % cfg["vocab_size"])[None]
    diff = float(np.abs(_logits(exported, cfg, ids) - _logits(fused_path, cfg, ids)).max())
    print(f"Fusion: {sum(before.values())} -> {sum(after.values())} nodes, {fused_stats}, "
          f"max |logits diff| {diff:.2e}", flush=True)
    return fused_path, fused_stats, before, after, diff


def _quantize(model, plan) -> list[str]:
    """The plan's weights: QDQ int8 for NPU targets, else MatMulNBits (+ a separately quantized table)."""
    from edgeqwen.planner.plan import TableMode
    from edgeqwen.targets import WeightEncoding

    exclude = set(plan.exclude_nodes)
    if plan.weight_encoding == WeightEncoding.QDQ:
        from edgeqwen.quantize.qdq import qdq_weights_in_place

        return qdq_weights_in_place(model, exclude=exclude)
    from edgeqwen.quantize.graph_quant import (ort_block_quant, quantize_embedding_table, quantize_in_place,
                                               require_planned_nodes)
    from edgeqwen.quantize.registry import get_algorithm, resolve_callable

    spec = get_algorithm(plan.algorithm)
    request = plan.quant_request()
    require_planned_nodes(model, request, "portable", spec.stage == "checkpoint")
    block_quant = resolve_callable(spec.block_quantizer) if spec.block_quantizer else ort_block_quant
    notes = quantize_in_place(model, request, exclude=exclude, shared_lm_head=False, block_quant=block_quant)
    if plan.table.mode == TableMode.SEPARATE:
        notes.extend(quantize_embedding_table(model, bits=plan.table.bits, block=plan.table.block_size,
                                              symmetric=plan.symmetric))
    return notes


def main(argv: list[str]) -> int:
    import onnx
    import onnx_ir as ir

    from edgeqwen.export.job import WorkerJob, WorkerResult, notes_to_decisions

    job = WorkerJob.read(argv[0])
    plan = job.plan
    out, work = Path(job.output), Path(job.cache_dir) / "portable"
    cfg = json.loads((Path(job.input) / "config.json").read_text())
    fused_path, fused_stats, before, after, diff = _export_and_fuse(job, cfg, work, plan.static_shapes)
    model = ir.load(str(fused_path))
    notes = trim_rotary_caches(model, plan.context_length)
    notes.extend(fold_constant_transposes(model))
    if plan.quantized:  # int4 and int8 recipes (the plan's matmul_bits says which)
        notes.extend(_quantize(model, plan))
    if plan.static_shapes:
        from edgeqwen.quantize.qdq import fix_static_shapes

        notes.extend(fix_static_shapes(model, plan.context_length))
    out.mkdir(parents=True, exist_ok=True)
    print(f"Saving ONNX model in {out}", flush=True)
    ir.save(model, str(out / "model.onnx"), external_data="model.onnx.data")
    if plan.quantized:
        from edgeqwen.export.post_export import post_export

        notes.extend(post_export(out, Path(job.input)))
    final = op_histogram(onnx.load(str(out / "model.onnx"), load_external_data=False))

    print("Saving GenAI config", flush=True)
    from onnxruntime_genai.models.builder import create_model

    create_model(model_name=None, input_path=job.input, output_dir=str(out), precision="fp32",
                 execution_provider="cpu", cache_dir=str(work / "builder"), config_only=True, hf_token="false",
                 hf_remote=False)
    gpath = out / "genai_config.json"
    genai = json.loads(gpath.read_text())
    genai["model"]["decoder"]["inputs"]["position_ids"] = "position_ids"
    genai["search"]["past_present_share_buffer"] = False
    gpath.write_text(json.dumps(genai, indent=4))
    report = {"exporter": "optimum-onnx + onnxruntime.transformers.optimizer (model_type gpt2, opt_level 0)",
              "ops_exported": before, "ops_fused": after, "ops_final": final, "fusions": fused_stats,
              "nodes": {"exported": sum(before.values()), "fused": sum(after.values()), "final": sum(final.values())},
              "fused_vs_unfused_max_abs_logit_diff": diff, "fusion_skipped": plan.static_shapes,
              "static_shapes": plan.static_shapes, "weight_encoding": plan.weight_encoding.value}
    WorkerResult(notes_to_decisions("exporter", notes), report).write(job.result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
