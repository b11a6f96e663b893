"""What zero points cost onnxruntime's MatMulNBits kernel: an artifact's own weight matrices (K, N, bits, block size,
accuracy level; random bytes) run as one graph at one activation row — a decode step's weight reads — with a zero
point per block and without (symmetric), interleaved, per bit width.

    python benchmarks/zero_point_cost.py ARTIFACT [--threads 2] [--rounds 30] [--out benchmarks/results --name ...]

The ratio is the measured price of asymmetric weights on this CPU: the mixed-precision planner's
`mixed_precision.zero_points: auto` spends it (a target's `int4_zero_point_cost`, the extra time over the symmetric
kernel) against the accuracy a group's zero points buy. Decoder layers only (the head is int8 and symmetric).
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from matmulnbits_rows import weight_graph  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402


def measure(artifact: Path, threads: int, rounds: int) -> dict:
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    rows = {}
    for bits in (4, 8):
        sessions = {}
        for zp in (True, False):
            model, inputs, nbytes, count = weight_graph(artifact, head=False, zero_points=zp, bits_only=bits)
            if not count:
                break
            sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
            rng = np.random.default_rng(1)
            feed = {name: rng.standard_normal((1, k)).astype(np.float32) for k, name in inputs.items()}
            sessions[zp] = (sess, feed, nbytes, count)
        if len(sessions) < 2:
            continue
        for sess, feed, *_ in sessions.values():
            for _ in range(5):
                sess.run(None, feed)
        times: dict[bool, list[float]] = {True: [], False: []}
        order = random.Random(bits)
        for _ in range(rounds):  # a pair per round, in a random order: the ratio of neighbours, not of drifting medians
            for zp in order.sample([True, False], 2):
                sess, feed, *_ = sessions[zp]
                t0 = time.perf_counter()
                sess.run(None, feed)
                times[zp].append(time.perf_counter() - t0)
        ms = {zp: statistics.median(v) * 1000 for zp, v in times.items()}
        ratios = sorted(a / b for a, b in zip(times[True], times[False]))
        rows[bits] = {"nodes": sessions[True][3], "mb_with": sessions[True][2] / 1e6, "mb_without": sessions[False][2] / 1e6,
                      "ms_with": ms[True], "ms_without": ms[False], "ratio": statistics.median(ratios),
                      "ratio_iqr": [ratios[len(ratios) // 4], ratios[3 * len(ratios) // 4]]}
    return {"artifact": str(artifact), "threads": threads, "rounds": rounds, "cpu_isa": cpu_isa(), "bits": rows}


def table(r: dict, name: str) -> str:
    lines = [f"MatMulNBits with and without zero points: {name}'s decoder-layer matrices (random bytes, their K/N/blocks/"
             f"accuracy level), one activation row, {r['threads']} threads, CPU {r['cpu_isa']}, {r['rounds']} "
             "rounds of one run each in a random order",
             "| bits | nodes | MB with / without | ms with zero points | ms symmetric | with / without (paired median, IQR) |",
             "|---|---|---|---|---|---|"]
    for bits, x in r["bits"].items():
        lo, hi = x["ratio_iqr"]
        lines.append(f"| {bits} | {x['nodes']} | {x['mb_with']:.1f} / {x['mb_without']:.1f} | {x['ms_with']:.2f} | "
                     f"{x['ms_without']:.2f} | {x['ratio']:.3f}x ({lo:.3f}–{hi:.3f}) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--out", type=Path, help="also keep the table and numbers there (NAME.md/.json)")
    ap.add_argument("--name", default="zero-point-cost")
    a = ap.parse_args()
    r = measure(a.artifact, a.threads, a.rounds)
    text = table(r, Path(a.artifact).resolve().name)
    if a.out:
        from shapes import write_results

        write_results(a.out, a.name, text, r)
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
