"""What a quantized export's model.onnx gets after the exporter: its int8 head symmetric from the checkpoint
(head_sym.py), each layer's gate and up fused (fuse.py), zero points that are all the default dropped
(zero_points.py) and, where planned, decoding's head as a shortlist (shortlist_head.py), in one read and one write of
its weights."""

from __future__ import annotations

from pathlib import Path

from .fuse import fuse_gate_up
from .graph_edit import edit_graph
from .head_sym import symmetric_int8_head
from .shortlist_head import add_shortlist
from .zero_points import drop_default_zero_points


def post_export(artifact: Path, checkpoint: Path, shortlist: int = 0, ranking_bits: int = 4) -> list[str]:
    """Notes for the manifest. Before lm_head.onnx is written: it reads model.onnx.data by offset. `shortlist`: K
    candidates ranked by a `ranking_bits` copy of the head."""
    edits = [lambda model: symmetric_int8_head(model, checkpoint), fuse_gate_up, drop_default_zero_points]
    if shortlist:
        edits.append(lambda model: add_shortlist(model, checkpoint, shortlist, ranking_bits))
    return edit_graph(artifact, edits)
