"""Config-only checkpoints for planner tests (no weights: the planner reads a config alone)."""

from __future__ import annotations

from pathlib import Path

from edgeqwen.architectures import by_family
from edgeqwen.checkpoint import Checkpoint
from edgeqwen.planner import ExportPlan


def config(family="qwen2", hidden=128, layers=4, heads=4, kv=2, inter=384, vocab=1024, head_dim=None, tied=None):
    arch = by_family(family).hf_class
    cfg = dict(architectures=[arch], hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
               num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab, max_position_embeddings=2048,
               tie_word_embeddings=(family == "qwen2") if tied is None else tied)
    if head_dim:
        cfg["head_dim"] = head_dim
    return Checkpoint(path=Path("/config-only"), source="config", architecture=arch, family=family, config=cfg)


def codes(p: ExportPlan) -> list[str]:
    return [d.code for d in p.decisions]
