"""Runs onnxruntime-genai's model builder in its own process, with edgeqwen's quantization plan.

The builder quantizes every MatMul with one setting. edgeqwen's plan needs more: INT8 weights
(MatMulNBits bits=8), per-node settings (mixed precision), other algorithms, and untied embeddings
quantized to GatherBlockQuantized. The builder's single hook for that, ``Model.to_int4``, is wrapped
here, so the graph construction (GQA, rotary, SkipSimplifiedLayerNorm, tied-embedding sharing) stays
the builder's own. Which quantizer runs comes from the algorithm's registry entry (its stage).
Verified against onnxruntime-genai 0.14.1 (pinned in pyproject.toml).

Usage: python -m edgeqwen.export.builder_worker JOB.json
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# imported once by the warm zygote (edgeqwen/warm.py) before it forks this worker's jobs
PRELOAD = ("torch", "transformers", "onnx", "onnx_ir", "onnxruntime", "onnxruntime_genai.models.builder")


def _install_quant_hook(plan) -> list[str]:
    # builder.py puts its own folder on sys.path and imports `builders` as a top-level package,
    # so the class it instantiates lives in sys.modules["builders.base"], not in
    # onnxruntime_genai.models.builders.base: patch that one.
    import onnxruntime_genai.models.builder  # noqa: F401

    from edgeqwen.architectures import HEAD_NODE
    from edgeqwen.planner.plan import TableMode
    from edgeqwen.quantize.graph_quant import (ort_block_quant, quantize_embedding_table, quantize_in_place,
                                               require_planned_nodes, sync_shared_table)
    from edgeqwen.quantize.registry import get_algorithm, resolve_callable
    from edgeqwen.quantize.request import NodeSetting, Scheme

    base = sys.modules["builders.base"]
    original = base.Model.to_int4
    spec = get_algorithm(plan.algorithm)
    request = plan.quant_request()
    head_only = spec.stage == "checkpoint"
    notes: list[str] = []  # what only the graph could tell, for the manifest

    def graph_quantize(self, model, block_quant=ort_block_quant) -> None:
        """edgeqwen's block quantizer on every MatMul still in float (all of them, or what a graph quantizer left)."""
        notes.extend(quantize_in_place(model, request, exclude=set(self.quant_attrs["int4"]["nodes_to_exclude"]),
                                       shared_lm_head=bool(self.shared_embeddings) and not self.unquantized_lm_head,
                                       block_quant=block_quant))

    def tables(model):
        """Every path ends here: the shared lookup re-pointed at the head's blocks, untied tables quantized."""
        notes.extend(sync_shared_table(model))
        if plan.table.mode == TableMode.SEPARATE:
            notes.extend(quantize_embedding_table(model, bits=plan.table.bits, block=plan.table.block_size,
                                                  symmetric=plan.symmetric))
        return model

    def to_int4_graph(self):
        """Low-memory path and "graph"-stage algorithms: edgeqwen quantizes the builder's graph itself."""
        model = self.model
        require_planned_nodes(model, request, "builder", head_only)
        if spec.graph_quantizer:
            default = NodeSetting(plan.matmul_bits, plan.block_size, Scheme.ASYM)
            skip = set(self.quant_attrs["int4"]["nodes_to_exclude"]) | {HEAD_NODE} | {
                n.name for n in model.graph if n.op_type == "MatMul" and request.node_setting(n.name) != default}
            model = resolve_callable(spec.graph_quantizer)(model, request, skip, notes)
        block_quant = resolve_callable(spec.block_quantizer) if spec.block_quantizer else ort_block_quant
        graph_quantize(self, model, block_quant)
        return tables(model)

    def to_int4_builder(self):
        """The builder's own quantizer ("builder" stage, and lm_head after a "checkpoint" stage) with the plan's
        per-node settings."""
        require_planned_nodes(self.model, request, "builder", head_only)
        cfg = self.quant_attrs["int4"]["algo_config"]
        if cfg is not None:
            custom = dict(cfg.customized_weight_config or {})
            for node in self.model.graph:
                if node.op_type == "MatMul" and node.name in plan.node_settings:
                    custom[node.name] = {**custom.get(node.name, {}), **request.node_setting(node.name).as_dict()}
                elif node.op_type == "MatMul":
                    custom[node.name] = {"bits": plan.matmul_bits, **custom.get(node.name, {})}
            if plan.head.bits is not None and HEAD_NODE in custom:
                custom[HEAD_NODE].update(bits=plan.head.bits, group_size=plan.head.block_size)
            cfg.customized_weight_config = custom
        return tables(original(self))

    base.Model.to_int4 = to_int4_graph if plan.low_memory or spec.stage == "graph" else to_int4_builder
    return notes


def _load_in_checkpoint_dtype() -> None:
    """The builder loads PyTorch weights as fp32; keep a bf16/fp16 checkpoint in its own dtype instead
    (half the memory). Each weight is widened to fp32 one at a time when it is quantized."""
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def from_pretrained(cls, *args, **kwargs):
        kwargs.setdefault("dtype", "auto")
        return original(cls, *args, **kwargs)

    transformers.AutoModelForCausalLM.from_pretrained = classmethod(from_pretrained)


def main(argv: list[str]) -> int:
    from edgeqwen.export.job import WorkerJob, WorkerResult, notes_to_decisions

    job = WorkerJob.read(argv[0])
    plan = job.plan
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    notes = _install_quant_hook(plan) if plan.quantized else []
    if plan.low_memory:
        _load_in_checkpoint_dtype()
    from onnxruntime_genai.models.builder import create_model

    create_model(model_name=None, input_path=job.input, output_dir=job.output, precision=plan.builder_precision,
                 execution_provider=plan.builder_ep, cache_dir=job.cache_dir, **plan.builder_options())
    if plan.quantized or plan.kv_fp16:  # one read and one write; before lm_head.onnx (reads model.onnx.data by offset)
        from edgeqwen.export.post_export import post_export

        notes.extend(post_export(Path(job.output), Path(job.input), plan.head.shortlist,
                                 plan.head.shortlist_bits, plan.quantized, plan.kv_fp16))
    if plan.prune_head:  # lm_head.onnx (every position, for accuracy checks); a shortlist graph's lm_head.shortlist.onnx
        from edgeqwen.export.shortlist_head import write_heads

        notes.extend(write_heads(Path(job.output)))
    WorkerResult(notes_to_decisions("exporter", notes)).write(job.result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
