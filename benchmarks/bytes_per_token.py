"""Weight bytes one decoded token reads, from the tensors themselves (not the file size).

On a memory-bound CPU, decode speed ≈ bandwidth ÷ these bytes. A file's size overstates them on both sides: a GGUF
carries its tokenizer in metadata; an onnxruntime-genai graph stores rotary cos/sin tables (one row read per
token) and, untied, an embedding table (one row per token). Counted here: every tensor a decode step reads whole —
the matrices with their scales and zero points, norms, the head (a tied table is read whole by the head, so it
counts once). Not counted: tensors read by row (Gather / GatherBlockQuantized tables and their scales, also through a
Reshape view — a shortlist head reads K rows of the int8 head that way —, GQA's cos/sin caches).

    python benchmarks/bytes_per_token.py ARTIFACT_DIR_OR_GGUF [--gguf-py DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROW_READ = {"Gather": {0}, "GatherBlockQuantized": {0, 2, 3}, "GroupQueryAttention": {7, 8}}  # op → inputs read by row
VIEWS = {"Reshape": 0}  # op → the input it only views: read as its output is read (a tied table's [V, H] view)


def onnx_bytes_per_token(artifact: Path) -> dict:
    import numpy as np
    import onnx

    model = onnx.load(str(Path(artifact) / "model.onnx"), load_external_data=False)
    g = model.graph
    uses: dict[str, list[tuple[str, int]]] = {}
    for node in g.node:
        for i, name in enumerate(node.input):
            uses.setdefault(name, []).append((node.op_type, i))
    for node in g.node:  # a view of a tensor counts as the tensor: Reshape → GatherBlockQuantized reads it by row
        if node.op_type in VIEWS and node.input[VIEWS[node.op_type]] in uses:
            name = node.input[VIEWS[node.op_type]]
            uses[name] = [u for u in uses[name] if u != (node.op_type, VIEWS[node.op_type])] + uses.get(node.output[0], [])
    read = by_row = 0
    for t in g.initializer:
        ext = {e.key: e.value for e in t.external_data}
        size = int(ext["length"]) if "length" in ext else (
            len(t.raw_data) or int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize)
        rowwise = all(i in ROW_READ.get(op, ()) for op, i in uses.get(t.name, [])) and t.name in uses
        if rowwise:
            by_row += size
        else:
            read += size
    return {"bytes_per_token": read, "bytes_read_by_row": by_row}


def gguf_bytes_per_token(path: Path, gguf_py: Path) -> dict:
    sys.path.insert(0, str(gguf_py))
    from gguf import GGUFReader

    tensors = {t.name: int(t.n_bytes) for t in GGUFReader(str(path)).tensors}
    tied = "output.weight" not in tensors  # the head reads token_embd whole; untied, the table is read by row
    by_row = 0 if tied else tensors.get("token_embd.weight", 0)
    return {"bytes_per_token": sum(tensors.values()) - by_row, "bytes_read_by_row": by_row}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("path")
    ap.add_argument("--gguf-py", help="llama.cpp's gguf-py folder (for a .gguf)")
    a = ap.parse_args()
    p = Path(a.path)
    r = gguf_bytes_per_token(p, Path(a.gguf_py)) if p.suffix == ".gguf" else onnx_bytes_per_token(p)
    print(f"{p}: {r['bytes_per_token'] / 1e6:.1f} MB read per token ({r['bytes_read_by_row'] / 1e6:.1f} MB read by row)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
