"""Runs onnxruntime-genai's model builder in its own process, with edgeqwen's quantization plan.

The builder quantizes every MatMul with one setting. edgeqwen's plan needs more: INT8 weights
(MatMulNBits bits=8), per-node overrides (mixed precision), and untied embeddings quantized to
GatherBlockQuantized. The builder's single hook for that, ``Model.to_int4``, is wrapped here, so the
graph construction (GQA, rotary, SkipSimplifiedLayerNorm, tied-embedding sharing) stays the
builder's own. Verified against onnxruntime-genai 0.14.1 (pinned in pyproject.toml).

Usage: python -m edgeqwen.export.builder_worker PLAN.json
"""

from __future__ import annotations

import json
import os
import sys


def _install_quant_hook(plan: dict) -> list[str]:
    # builder.py puts its own folder on sys.path and imports `builders` as a top-level package,
    # so the class it instantiates lives in sys.modules["builders.base"], not in
    # onnxruntime_genai.models.builders.base: patch that one.
    import onnxruntime_genai.models.builder  # noqa: F401

    from edgeqwen.export.streaming_quant import (apply_overrides, quantize_embedding_table, quantize_in_place,
                                                 sync_shared_table)

    base = sys.modules["builders.base"]
    original = base.Model.to_int4
    default_bits = plan["matmul_bits"]
    patterns = plan.get("node_overrides", {})  # glob → {bits, group_size, scheme}

    notes: list[str] = []  # what was decided per node, for the manifest

    def rtn_in_place(self, model) -> None:
        """edgeqwen's block quantizer on every MatMul still in float (all of them, or what HQQ left)."""
        notes.extend(quantize_in_place(
            model, default_bits=default_bits, block=plan["block_size"], symmetric=plan["symmetric"],
            accuracy_level=plan["accuracy_level"], lm_head_bits=8 if self.int8_lm_head else None,
            exclude=set(self.quant_attrs["int4"]["nodes_to_exclude"]), patterns=patterns,
            shared_lm_head=bool(self.shared_embeddings) and not self.unquantized_lm_head,
        ))

    def tables(model):
        """Every path ends here: the shared lookup re-pointed at the head's blocks, untied tables quantized."""
        notes.extend(sync_shared_table(model))
        if plan.get("quantize_gather"):
            notes.extend(quantize_embedding_table(model, bits=plan["gather_bits"], block=plan["block_size"],
                                                  symmetric=plan["symmetric"]))
        return model

    def to_int4_streaming(self):
        rtn_in_place(self, self.model)
        return tables(self.model)

    def to_int4_hqq(self):
        """onnxruntime's HQQ quantizer on every int4 MatMul of the default layout; what it cannot write goes
        through the shared RTN path: lm_head (the shared embedding table needs integer zero points) and nodes
        a recipe override gives other bits, block or symmetry."""
        import onnx_ir as ir
        from onnxruntime.quantization.matmul_nbits_quantizer import HQQWeightOnlyQuantConfig, MatMulNBitsQuantizer

        exclude = set(self.quant_attrs["int4"]["nodes_to_exclude"])
        default = {"bits": 4, "group_size": plan["block_size"], "scheme": "asym"}
        rtn_nodes = {n.name for n in self.model.graph if n.op_type == "MatMul" and (
            n.name == "/lm_head/MatMul" or apply_overrides(n.name, dict(default), patterns, []) != default)}
        quant = MatMulNBitsQuantizer(ir.to_proto(self.model), nodes_to_exclude=sorted(exclude | rtn_nodes),
                                     algo_config=HQQWeightOnlyQuantConfig(block_size=plan["block_size"], bits=4))
        quant.process()
        model = ir.from_proto(quant.model.model)
        hqq = [n for n in model.graph if n.op_type == "MatMulNBits"]
        for n in hqq:  # the HQQ quantizer writes no accuracy level; the target's applies as for RTN
            n.attributes["accuracy_level"] = ir.AttrInt64("accuracy_level", plan["accuracy_level"])
        notes.append(f"hqq (onnxruntime HQQ, block {plan['block_size']}, float zero points) on {len(hqq)} MatMuls; "
                     f"rtn on {len(rtn_nodes)} ({', '.join(sorted(rtn_nodes))})")
        rtn_in_place(self, model)  # plan["symmetric"] is false for hqq (the plan forces asymmetric)
        return tables(model)

    def to_int4(self):
        cfg = self.quant_attrs["int4"]["algo_config"]
        if cfg is not None:
            custom = dict(cfg.customized_weight_config or {})
            for node in self.model.graph:
                if node.op_type != "MatMul":
                    continue
                entry = apply_overrides(node.name, {"bits": default_bits, **custom.get(node.name, {})}, patterns, notes)
                shape = node.inputs[1].shape if len(node.inputs) > 1 and node.inputs[1] is not None else None
                k = shape[0] if shape is not None and len(shape) == 2 and isinstance(shape[0], int) else None
                block = entry.get("group_size", plan["block_size"])
                blocks = -(-k // block) if k else 0
                asym = entry.get("scheme", "sym" if plan["symmetric"] else "asym") == "asym"
                if asym and entry["bits"] == 4 and blocks % 2 == 1:
                    # onnxruntime's RTN packs 4-bit zero points two per byte across rows: an odd
                    # block count per column breaks its reshape. Symmetric needs no zero points.
                    entry["scheme"] = "sym"
                    notes.append(f"{node.name}: K={k} is {blocks} blocks of {block} (odd) -> symmetric "
                                     "(onnxruntime's asymmetric 4-bit packing needs an even block count)")
                custom[node.name] = entry
            cfg.customized_weight_config = custom
        return tables(original(self))

    base.Model.to_int4 = (to_int4_streaming if plan.get("low_memory") else
                          to_int4_hqq if plan["algorithm"] == "hqq" else to_int4)
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
    plan = json.loads(open(argv[0]).read())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    notes = _install_quant_hook(plan) if plan["precision"] == "int4" else []
    if plan.get("low_memory"):
        _load_in_checkpoint_dtype()
    from onnxruntime_genai.models.builder import create_model

    create_model(
        model_name=None,
        input_path=plan["input"],
        output_dir=plan["output"],
        precision=plan["builder_precision"],
        execution_provider=plan["execution_provider"],
        cache_dir=plan["cache_dir"],
        **plan["extra_options"],
    )
    with open(os.path.join(plan["cache_dir"], "worker_decisions.json"), "w") as f:
        json.dump(notes, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
