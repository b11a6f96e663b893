"""Where a decode step's time goes: onnxruntime's own profiler over the runner's decode steps, time per operator type
as a share of the steps' run time, beside the bytes each operator type reads (its weights) and the GB/s that implies.

    python benchmarks/profile_decode.py ARTIFACT [--threads 2] [--prompt-len 128] [--steps 64]

The first run (the prefill) is left out; every later `model_run` is one decode step. Weight bytes per operator type
come from the graph's initializers (MatMulNBits: packed weights, scales, zero points; GatherBlockQuantized's table and
GroupQueryAttention's rotary caches: one row per token, counted as nil), so the GB/s column says how close each kernel
comes to streaming its weights. The profiler costs time per node and the step's own speed varies with what else
runs: read the shares first.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bytes_per_token import ROW_READ  # noqa: E402
from shapes import write_results  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402


def node_label(node) -> str:
    """The row a node's time goes to: its operator type, MatMulNBits split by bit width (4-bit and 8-bit nodes run
    different kernels, and their cost per byte differs by CPU)."""
    if node.op_type == "MatMulNBits":
        bits = next((a.i for a in node.attribute if a.name == "bits"), 4)
        return f"MatMulNBits {bits}-bit"
    return node.op_type


def graph_labels(model_path: Path) -> tuple[dict[str, str], dict[str, int]]:
    """(node name -> label, label -> initializer bytes read whole per step). bytes_per_token.py's rule: inputs read by
    row — tables, rotary caches — are not counted."""
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    sizes = {t.name: int(np.prod(t.dims)) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
             for t in model.graph.initializer}
    labels: dict[str, str] = {}
    out: dict[str, int] = defaultdict(int)
    for node in model.graph.node:
        labels[node.name] = node_label(node)
        out[labels[node.name]] += sum(sizes.get(name, 0) for i, name in enumerate(node.input)
                                      if i not in ROW_READ.get(node.op_type, ()))
    return labels, dict(out)


def profile(artifact: str, threads: int, prompt_len: int, steps: int) -> dict:
    from edgeqwen.runtime import runner as R

    work = Path(tempfile.mkdtemp(prefix="edgeqwen-profile-"))
    original = R.Runner._open_session

    def with_profiling(self, path, so, cfg, providers):
        so.enable_profiling = True
        so.profile_file_prefix = str(work / "decode")
        return original(self, path, so, cfg, providers)

    R.Runner._open_session = with_profiling
    runner = R.Runner(artifact, threads=threads, verify=False)
    ids = np.random.default_rng(0).integers(100, runner.vocab_size - 100, prompt_len).tolist()
    out = runner.generate(ids, R.Sampling(max_new_tokens=steps + 1, ignore_eos=True))
    trace = json.loads(Path(runner.session.end_profiling()).read_text())
    runs = sorted((e for e in trace if e.get("name") == "model_run"), key=lambda e: e["ts"])
    decode = runs[1:]  # the first run is the prefill
    start, total = decode[0]["ts"], sum(e["dur"] for e in decode)
    labels, weights = graph_labels(Path(artifact) / runner.decoder_file)
    by_op: dict[str, float] = defaultdict(float)
    for e in trace:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= start:
            node = e["name"][: -len("_kernel_time")]
            by_op[labels.get(node, e["args"]["op_name"])] += e["dur"]
    steps_n = len(decode)
    rows = []
    for op, us in sorted(by_op.items(), key=lambda kv: -kv[1]):
        ms = us / steps_n / 1000
        gb = weights.get(op, 0) / 1e9
        rows.append({"op": op, "ms_per_step": ms, "share": us / total, "weight_mb": gb * 1e3,
                     "gbs": gb / (ms / 1000) if ms and gb else None})
    return {"artifact": artifact, "threads": threads, "cpu": cpu_isa(), "steps": steps_n, "run_ms_per_step": total / steps_n / 1000,
            "decode_tps": out.decode_tps, "ops": rows,
            "kernels_share": sum(r["share"] for r in rows)}


def table(r: dict) -> str:
    lines = [f"Decode step profile: {Path(r['artifact']).name}, {r['threads']} threads, CPU {r.get('cpu', '?')}, "
             f"{r['steps']} steps "
             f"(onnxruntime profiler; run time {r['run_ms_per_step']:.2f} ms per step, the kernels "
             f"{r['kernels_share']:.0%} of it; decode {r['decode_tps']:.1f} tok/s with profiling on)",
             "| operator | ms per step | share of the run | weights read MB | GB/s |", "|---|---|---|---|---|"]
    for o in r["ops"]:
        gbs = f"{o['gbs']:.1f}" if o["gbs"] else ""
        lines.append(f"| {o['op']} | {o['ms_per_step']:.3f} | {o['share']:.1%} | {o['weight_mb']:.0f} | {gbs} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifact")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--name", default="profile-decode")
    args = ap.parse_args()
    r = profile(args.artifact, args.threads, args.prompt_len, args.steps)
    write_results(args.out, args.name, table(r), r)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
