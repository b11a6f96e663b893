"""Synthetic sensitivity measurements (the record planner/sensitivity.py writes) for planner tests."""

from __future__ import annotations

from edgeqwen.architectures import get_architecture
from edgeqwen.planner.budget import grid_for

NODES = get_architecture("Qwen2ForCausalLM").module_nodes["builder"]
KINDS = {"attn/qkv_proj": (["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"], [[128, 128], [128, 64], [128, 64]]),
         "attn/o_proj": (["self_attn.o_proj"], [[128, 128]]), "mlp/gate_proj": (["mlp.gate_proj"], [[128, 384]]),
         "mlp/up_proj": (["mlp.up_proj"], [[128, 384]]), "mlp/down_proj": (["mlp.down_proj"], [[384, 128]])}
FORMATS = [(4, 64), (4, 32), (8, 128)]


def record(layers: int, kld=lambda layer, kind: 0.001, base_block=128) -> dict:
    """A measurement as planner/sensitivity.py writes it: err grows with the block, int8 is ~256x smaller."""
    groups = []
    for i in range(layers):
        for kind, (modules, shapes) in KINDS.items():
            err = {f"int{b}/b{s}": (s / 128) * (1.0 if b == 4 else 1 / 256) for b, s in grid_for((4, base_block), FORMATS)}
            groups.append({"layer": i, "kind": kind, "modules": modules, "shapes": shapes, "kld": kld(i, kind), "err": err})
    return {"base_block": base_block, "groups": groups}
