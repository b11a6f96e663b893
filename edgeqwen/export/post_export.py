"""What a quantized export's model.onnx gets after the exporter: its int8 head symmetric from the checkpoint
(head_sym.py) and each layer's gate and up fused (fuse.py), in one read and one write of its weights."""

from __future__ import annotations

from pathlib import Path

from .fuse import fuse_gate_up
from .graph_edit import edit_graph
from .head_sym import symmetric_int8_head


def post_export(artifact: Path, checkpoint: Path) -> list[str]:
    """Notes for the manifest. Before lm_head.onnx is written: it reads model.onnx.data by offset."""
    return edit_graph(artifact, [lambda model: symmetric_int8_head(model, checkpoint), fuse_gate_up])
