"""What a builder export's model.onnx gets after the exporter: quantized, its int8 head symmetric from the checkpoint
(head_sym.py), each layer's gate and up fused (fuse.py), zero points that are all the default dropped
(zero_points.py) and, where planned, decoding's head as a shortlist (shortlist_head.py); where planned, its KV cache in
fp16 (kv_fp16.py); in one read and one write of its weights."""

from __future__ import annotations

from pathlib import Path

from .fuse import fuse_gate_up
from .graph_edit import edit_graph
from .head_sym import symmetric_int8_head
from .kv_fp16 import kv_cache_fp16
from .shortlist_head import add_shortlist
from .zero_points import drop_default_zero_points


def post_export(artifact: Path, checkpoint: Path, shortlist: int = 0, ranking_bits: int = 4, quantized: bool = True,
                kv_fp16: bool = False) -> list[str]:
    """Notes for the manifest. Before lm_head.onnx is written: it reads model.onnx.data by offset. `shortlist`: K
    candidates ranked by a `ranking_bits` copy of the head."""
    edits = [lambda model: symmetric_int8_head(model, checkpoint), fuse_gate_up, drop_default_zero_points] \
        if quantized else []
    if quantized and shortlist:
        edits.append(lambda model: add_shortlist(model, checkpoint, shortlist, ranking_bits))
    if kv_fp16:
        edits.append(kv_cache_fp16)
    return edit_graph(artifact, edits) if edits else []
