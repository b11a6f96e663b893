"""What onnxruntime's MatMulNBits kernel charges per extra row: an artifact's own weight matrices (every MatMulNBits
node's K, N, bits, block size and zero points, random bytes) run as one graph over M = 1, 2, 3, 4, 8 activation rows.

A batched decode step over B sequences (or a k-token speculative verify step) multiplies these matrices by B (k) rows
at once; if the kernel read the weights once for all rows, B rows would cost about what one row costs and B
concurrent requests would decode B times as fast. The table says what it does instead, beside the aggregate ceiling
that implies (B x the one-row time / the B-row time) — the bound on `serve`'s concurrent speedup from the weights
alone, before attention, sampling or HTTP.

    python benchmarks/matmulnbits_rows.py ARTIFACT [--threads 2] [--rounds 12] [--int8]

`--int8` runs the same K x N matrices a second way beside it, as int8 weights (per-column scales) through
onnxruntime's int8 GEMM (DynamicQuantizeMatMul: MLAS QGEMM, its weights prepacked at load) — twice the bytes, but a
kernel built for many rows — to tell a kernel's limit (MatMulNBits works per pair of rows: MLAS's CompInt8 kernels
tile 2 rows x 4 columns) from the CPU's own arithmetic limit.

Sizes are interleaved in a shuffled order after warm-up runs of every size (onnxruntime plans again when the input
shape changes, so the first run after another size is slower: measured up to 1.8x), medians per size.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from edgeqwen.runtime.isa import cpu_isa

ROWS = (1, 2, 3, 4, 8)


def weight_graph(artifact: Path, head: bool, zero_points: bool | None = None, bits_only: int | None = None):
    """A graph of the artifact's MatMulNBits nodes (same attributes, random weights), one input per distinct K.
    `zero_points`: every node with (True) or without (False) zero points, else as the artifact has them; `bits_only`:
    only the nodes of that bit width."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgeqwen.export.graph_edit import node_attrs

    model = onnx.load(str(artifact / "model.onnx"), load_external_data=False)
    rng = np.random.default_rng(0)
    nodes, inits, outs, inputs, nbytes = [], [], [], {}, 0
    for i, node in enumerate(n for n in model.graph.node if n.op_type == "MatMulNBits"):
        a = node_attrs(node)
        if ("lm_head" in node.name and not head) or (bits_only and a["bits"] != bits_only):
            continue
        k, n, bits, block = a["K"], a["N"], a["bits"], a["block_size"]
        blocks = -(-k // block)
        w = rng.integers(0, 256, (n, blocks, block * bits // 8), dtype=np.uint8)
        s = (rng.random(n * blocks, dtype=np.float32) * 0.01).astype(np.float32)
        names = [inputs.setdefault(k, f"x{k}"), f"w{i}", f"s{i}"]
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(s, f"s{i}")]
        nbytes += w.nbytes + s.nbytes
        if zero_points if zero_points is not None else len(node.input) > 3 and node.input[3]:
            z = rng.integers(0, 256, n * (-(-blocks * bits // 8)), dtype=np.uint8)
            inits.append(numpy_helper.from_array(z, f"z{i}"))
            names.append(f"z{i}")
            nbytes += z.nbytes
        nodes.append(helper.make_node("MatMulNBits", names, [f"y{i}"], domain="com.microsoft", K=k, N=n, bits=bits,
                                      block_size=block, accuracy_level=a.get("accuracy_level", 0)))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(nodes, "weights", [helper.make_tensor_value_info(v, TensorProto.FLOAT, ["M", k])
                                                 for k, v in inputs.items()], outs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return m, inputs, nbytes, len(nodes)


def int8_graph(nbits_model):
    """The same K x N matrices as int8 weights with per-column scales through DynamicQuantizeMatMul (onnxruntime's
    int8 GEMM); returns (model, weight bytes)."""
    from onnx import TensorProto, helper, numpy_helper

    from edgeqwen.export.graph_edit import node_attrs

    rng = np.random.default_rng(0)
    nodes, inits, outs, nbytes = [], [], [], 0
    for i, node in enumerate(nbits_model.graph.node):
        a = node_attrs(node)
        k, n = a["K"], a["N"]
        w = rng.integers(-127, 128, (k, n), dtype=np.int8)
        s = (rng.random(n, dtype=np.float32) * 0.01).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(s, f"s{i}")]
        nbytes += w.nbytes + s.nbytes
        nodes.append(helper.make_node("DynamicQuantizeMatMul", [node.input[0], f"w{i}", f"s{i}"], [f"y{i}"],
                                      domain="com.microsoft"))
        outs.append(helper.make_tensor_value_info(f"y{i}", TensorProto.FLOAT, ["M", n]))
    graph = helper.make_graph(nodes, "int8", list(nbits_model.graph.input), outs, inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    return m, nbytes


def measure(artifact: Path, threads: int, rounds: int, head: bool, int8: bool = False) -> dict:
    """Medians (and minima: on a noisy machine the floor is the kernel's) per row count, every graph's sizes shuffled
    and interleaved with the others'."""
    import onnxruntime as ort

    model, inputs, nbytes, count = weight_graph(artifact, head)
    graphs = {"nbits": (model, nbytes)}
    if int8:
        graphs["int8"] = int8_graph(model)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sessions = {g: ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                for g, (m, _) in graphs.items()}
    rng = np.random.default_rng(1)
    feeds = {m: {name: rng.standard_normal((m, k)).astype(np.float32) for k, name in inputs.items()} for m in ROWS}
    for sess in sessions.values():
        for m in ROWS * 3:
            sess.run(None, feeds[m])
    order = [(g, m) for g in sessions for m in ROWS] * rounds
    random.Random(0).shuffle(order)
    times: dict[tuple, list[float]] = {key: [] for key in order}
    for g, m in order:
        t0 = time.perf_counter()
        sessions[g].run(None, feeds[m])
        times[(g, m)].append(time.perf_counter() - t0)
    summary = {}
    for g, (_, nb) in graphs.items():
        ms = {m: statistics.median(times[(g, m)]) * 1000 for m in ROWS}
        lo = {m: min(times[(g, m)]) * 1000 for m in ROWS}
        summary[g] = {"weight_mb": nb / 1e6, "ms": ms, "min_ms": lo, "ratio": {m: ms[m] / ms[1] for m in ROWS},
                      "ceiling": {m: m * ms[1] / ms[m] for m in ROWS}, "gbs_one_row": nb / (ms[1] / 1000) / 1e9}
    out = {"artifact": str(artifact), "nodes": count, "threads": threads, "cpu_isa": cpu_isa(), "rounds": rounds,
           **summary.pop("nbits")}
    return {**out, **summary}


def table(r: dict, name: str) -> str:
    lines = [f"MatMulNBits over M activation rows: {name}'s {r['nodes']} weight matrices ({r['weight_mb']:.0f} MB, random "
             f"bytes, its bits/blocks/zero points), {r['threads']} threads, CPU {r['cpu_isa']}, medians (minima) of "
             f"{r['rounds']} shuffled interleaved rounds; one row reads {r['gbs_one_row']:.1f} GB/s "
             f"({r['weight_mb'] / r['min_ms'][1]:.1f} at its fastest)",
             "| rows M | ms (min) | vs 1 row | aggregate ceiling (M x 1-row ms / M-row ms; by minima) |",
             "|---|---|---|---|"]
    lo = r["min_ms"]
    for m in ROWS:
        lines.append(f"| {m} | {r['ms'][m]:.2f} ({lo[m]:.2f}) | {r['ratio'][m]:.2f}x | {r['ceiling'][m]:.2f}x "
                     f"({m * lo[1] / lo[m]:.2f}x) |")
    if "int8" in r:
        q, ms1 = r["int8"], r["ms"][1]
        lines += ["", f"The same matrices as int8 weights through onnxruntime's int8 GEMM (DynamicQuantizeMatMul, "
                      f"{q['weight_mb']:.0f} MB), interleaved with the rows above; minima beside medians (the "
                      f"machine's noise only adds time):",
                  "| rows M | MatMulNBits ms (min) | int8 GEMM ms (min) | int8 GEMM vs MatMulNBits | "
                  "aggregate ceiling, int8 GEMM rows vs one MatMulNBits row (by minima) |", "|---|---|---|---|---|"]
        lo1 = r["min_ms"][1]
        for m in ROWS:
            lines.append(f"| {m} | {r['ms'][m]:.2f} ({r['min_ms'][m]:.2f}) | {q['ms'][m]:.2f} ({q['min_ms'][m]:.2f}) "
                         f"| {q['ms'][m] / r['ms'][m]:.2f}x | {m * ms1 / q['ms'][m]:.2f}x "
                         f"({m * lo1 / q['min_ms'][m]:.2f}x) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--no-head", action="store_true", help="the decoder layers' matrices only")
    ap.add_argument("--int8", action="store_true", help="also the same matrices through onnxruntime's int8 GEMM")
    ap.add_argument("--out", type=Path, help="also keep the table and numbers there (NAME.md/.json)")
    ap.add_argument("--name", default="matmulnbits-rows")
    a = ap.parse_args()
    r = measure(a.artifact, a.threads, a.rounds, head=not a.no_head, int8=a.int8)
    text = table(r, Path(a.artifact).resolve().name)
    if a.out:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from shapes import write_results

        write_results(a.out, a.name, text, r)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
