"""What speculative decoding pays per verify step: a k-token step (all k positions' logits, as verification needs)
against a 1-token decode step, on real-size shapes, and the speedup that implies at a given acceptance rate.

    python benchmarks/verify_cost.py ARTIFACT [ARTIFACT ...] [--threads 2] [--context 256] [--acceptance 0.85]
    python benchmarks/verify_cost.py --shape qwen2.5-0.5b --recipe qwen2.5-0.5b-instruct/cpu-x86_64-int4

Random weights accept nothing, so acceptance comes from trained models (`edgeqwen bench --speculate` on the tiny
copy-trained pair); the cost of verifying comes from here. Each step runs at position `context` over the in-place KV
cache and is rolled back, exactly as a rejected draft is; medians of `--repeats` steps, each size's steps back to back.

Implied speedup for a draft of k tokens whose tokens are each accepted with probability a (independently):
tokens per step E = (1 - a^(k+1)) / (1 - a), speedup = E / (cost of a (k+1)-token step / cost of a 1-token step),
prompt lookup's drafting cost taken as nil (a numpy n-gram search, ~0.05 ms). With several artifacts, a second table
has the fastest one drafting for the others: speedup = E x (target's 1-token ms) / (k x draft's 1-token ms + the
target's (k+1)-token ms).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import ensure_artifact, write_results  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402

SIZES = (1, 2, 4, 8, 16)


def measure(artifact: str, threads: int, context: int, repeats: int) -> dict:
    import numpy as np

    from edgeqwen.runtime.runner import Runner

    runner = Runner(artifact, threads=threads, verify=False)
    rng = np.random.default_rng(0)
    prompt = rng.integers(100, runner.vocab_size - 100, context).tolist()
    runner.reset()
    runner.reserve(context + max(SIZES) + 1)
    runner.step(prompt)
    times: dict[int, list[float]] = {n: [] for n in SIZES}
    for n in SIZES:  # each size's steps back to back (onnxruntime re-plans when the input shape changes: measured
        for r in range(repeats + 2):  # up to 1.8x on the first step after another size), two warm-up steps
            toks = rng.integers(100, runner.vocab_size - 100, n).tolist()
            t0 = time.perf_counter()
            runner.step(toks, all_logits=n > 1)
            dt = time.perf_counter() - t0
            runner.rollback(context)
            if r >= 2:
                times[n].append(dt)
    ms = {n: statistics.median(v) * 1000 for n, v in times.items()}
    return {"artifact": artifact, "name": Path(artifact).resolve().name, "recipe": runner.manifest.get("name", ""), "context": context,
            "threads": threads, "ms": ms, "ratio": {n: ms[n] / ms[1] for n in SIZES}}


BATCHES = (1, 2, 4)


def measure_batch(artifact: str, threads: int, context: int, repeats: int) -> dict:
    """The batch engine's decode step (BatchEngine._run, what serve runs) over B sequences of one new token each at
    position `context`: what batching pays per sequence, beside a verify step's k tokens of one sequence."""
    import numpy as np

    from edgeqwen.runtime.batch import BatchEngine
    from edgeqwen.runtime.runner import Runner

    runner = Runner(artifact, threads=threads, verify=False)
    engine = BatchEngine(runner, max_batch=max(BATCHES))
    try:
        engine._reserve(context + 1)
        times: dict[int, list[float]] = {b: [] for b in BATCHES}
        for r in range(repeats + 2):
            for b in BATCHES:
                ids = np.full((b, 1), 1000, dtype=np.int64)
                mask = np.ones((b, context + 1), dtype=np.int64)
                pos = np.full((b, 1), context, dtype=np.int64)
                t0 = time.perf_counter()
                engine._run(slice(0, b), ids, mask, pos)
                if r >= 2:
                    times[b].append(time.perf_counter() - t0)
    finally:
        engine.close()
    ms = {b: statistics.median(v) * 1000 for b, v in times.items()}
    return {"name": Path(artifact).resolve().name, "ms": ms, "per_sequence_vs_alone": {b: ms[b] / b / ms[1] for b in BATCHES}}


def batch_table(rows: list[dict]) -> str:
    lines = ["Batched decode step (BatchEngine._run, what `serve` runs per step), B sequences x 1 token; the ceiling on "
             "B concurrent requests' aggregate speedup is B x (1-sequence ms) / (B-sequence ms)",
             "| artifact | " + " | ".join(f"B={b} ms" for b in BATCHES) + " | "
             + " | ".join(f"B={b} aggregate ceiling" for b in BATCHES[1:]) + " |",
             "|---|" + "---|" * (2 * len(BATCHES) - 1)]
    for r in rows:
        ms = r["ms"]
        lines.append(f"| {r['name']} | " + " | ".join(f"{ms[b]:.2f}" for b in BATCHES) + " | "
                     + " | ".join(f"{b * ms[1] / ms[b]:.2f}x" for b in BATCHES[1:]) + " |")
    return "\n".join(lines)


def implied(ratio: dict, acceptance: float) -> list[tuple[int, float, float]]:
    """(k, tokens per step, speedup) for drafts of k = size - 1 tokens."""
    out = []
    for n in SIZES[1:]:
        k = n - 1
        e = (1 - acceptance ** (k + 1)) / (1 - acceptance) if acceptance < 1 else k + 1
        out.append((k, e, e / ratio[n]))
    return out


def draft_table(rows: list[dict], acceptance: float) -> str:
    """The fastest artifact measured drafting for each other one: a round drafts k tokens (k draft steps, each a
    1-token step of the draft) and verifies them in one (k+1)-token step of the target."""
    draft = min(rows, key=lambda r: r["ms"][1])
    lines = [f"Draft model: {draft['name']} ({draft['ms'][1]:.2f} ms per token) drafting, acceptance {acceptance:.0%}",
             "| target | 1-token step ms | " + " | ".join(f"speedup k={n - 1}" for n in SIZES[1:]) + " |",
             "|---|---|" + "---|" * (len(SIZES) - 1)]
    for r in rows:
        if r is draft:
            continue
        cells = []
        for n in SIZES[1:]:
            k = n - 1
            e = (1 - acceptance ** (k + 1)) / (1 - acceptance) if acceptance < 1 else k + 1
            cells.append(f"{e * r['ms'][1] / (k * draft['ms'][1] + r['ms'][n]):.2f}x")
        lines.append(f"| {r['name']} | {r['ms'][1]:.2f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table(rows: list[dict], acceptance: float) -> str:
    head = ("| artifact | " + " | ".join(f"{n}-token step ms" for n in SIZES) + " | "
            + " | ".join(f"{n} vs 1" for n in SIZES[1:]) + " | " + " | ".join(
                f"speedup k={n - 1} @ {acceptance:.0%}" for n in SIZES[1:]) + " |")
    lines = [f"Verify-step cost over the in-place KV cache at position {rows[0]['context']}, {rows[0]['threads']} "
             f"threads, CPU {cpu_isa()}, medians (benchmarks/verify_cost.py); implied speedup at acceptance {acceptance:.0%}", head,
             "|---|" + "---|" * (len(SIZES) + 2 * (len(SIZES) - 1))]
    for r in rows:
        imp = implied(r["ratio"], acceptance)
        lines.append(f"| {r['name']} | " + " | ".join(f"{r['ms'][n]:.2f}" for n in SIZES) + " | "
                     + " | ".join(f"{r['ratio'][n]:.2f}x" for n in SIZES[1:]) + " | "
                     + " | ".join(f"{s:.2f}x ({e:.1f} tok/step)" for _, e, s in imp) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("artifacts", nargs="*")
    ap.add_argument("--shape", action="append", default=[], help="a benchmarks/shapes.py shape (with --recipe)")
    ap.add_argument("--recipe", action="append", default=[], help="the recipe built on each --shape (cached)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--acceptance", type=float, default=0.8, help="draft acceptance rate for the implied speedup")
    ap.add_argument("--batch", action="store_true", help="also time the batch engine's step over 1, 2, 4 sequences")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--name", default="verify-cost")
    args = ap.parse_args()
    if len(args.shape) != len(args.recipe):
        ap.error("give one --recipe per --shape")
    arts = list(args.artifacts) + [str(ensure_artifact(s, r)[1]) for s, r in zip(args.shape, args.recipe)]
    if not arts:
        ap.error("give artifact folders or --shape/--recipe pairs")
    rows = []
    for a in arts:
        rows.append(measure(a, args.threads, args.context, args.repeats))
        print(json.dumps({k: v for k, v in rows[-1].items() if k in ("name", "ms")}), flush=True)
    text = table(rows, args.acceptance)
    if len(rows) > 1:
        text += "\n\n" + draft_table(rows, args.acceptance)
    if args.batch:
        batched = [measure_batch(a, args.threads, args.context, args.repeats) for a in arts]
        text += "\n\n" + batch_table(batched)
        rows.append({"batched": batched})
    write_results(args.out, args.name, text, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
