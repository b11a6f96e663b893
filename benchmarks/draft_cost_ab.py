"""Speculative decoding with the draft sized by measured step cost (`runner.DraftCost`, the default) against the
acceptance rule alone (+2 after a full accept, -1 after a rejection: the rule before it) and plain greedy decoding,
on one artifact, every run a fresh process, rounds interleaved with a rotating order; medians and paired ratios.

    python benchmarks/draft_cost_ab.py ARTIFACT [--speculate lookup|draft=ARTIFACT] [--rounds 5] [--tokens 128]

The prompt is `edgeqwen bench --speculate`'s edit-style one (a passage of the packaged eval text, then its start
again). What decides the outcome is the machine: where a k-token verify step costs little more than a 1-token one
(weight-bound) both rules draft alike; where it costs nearly k steps (arithmetic-bound kernels) the acceptance rule
keeps drafting at a loss and the cost rule stops.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ab_decode import run_worker  # noqa: E402
from shapes import write_results  # noqa: E402

from edgeqwen.runtime.isa import cpu_isa  # noqa: E402

WORKER = textwrap.dedent("""
    import json, sys, time
    from edgeqwen.bench_speculate import edit_prompt
    from edgeqwen.runtime.runner import DraftCost, Runner, Sampling, make_drafter
    art, threads, tokens, mode, speculate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
    if mode == "acceptance rule only":
        DraftCost.limit = lambda self, k: k  # the draft length as the acceptance rule alone sets it
    r = Runner(art, threads=threads, verify=False)
    ids = edit_prompt(r)
    drafter = None if mode == "plain" else make_drafter(speculate, threads)
    r.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True), speculate=drafter)  # warm-up
    s = Sampling(max_new_tokens=tokens, ignore_eos=True)
    t0 = time.perf_counter()
    out = r.generate(ids, s, speculate=drafter)
    dec = time.perf_counter() - t0 - out.ttft_s
    st = getattr(drafter, "stats", None)
    print("RESULT " + json.dumps({"decode_tps": (len(out.token_ids) - 1) / dec, "tokens": out.token_ids,
                                  "acceptance": st.acceptance if st else None,
                                  "tokens_per_step": st.tokens_per_step if st else None,
                                  "cut": drafter.cost.limited if drafter else None}))
""")
MODES = ("plain", "cost rule (default)", "acceptance rule only")


def run_once(artifact: str, threads: int, tokens: int, mode: str, speculate: str) -> dict:
    return run_worker(WORKER, [artifact, threads, tokens, mode, speculate], f"{artifact} ({mode})")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--speculate", default="lookup")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    ap.add_argument("--name", default="draft-cost-ab")
    a = ap.parse_args()
    got: dict[str, list[dict]] = {m: [] for m in MODES}
    for k in range(a.rounds):
        for mode in MODES[k % 3:] + MODES[:k % 3]:
            got[mode].append(run_once(a.artifact, a.threads, a.tokens, mode, a.speculate))
        print(f"round {k + 1}/{a.rounds}: " + ", ".join(f"{m} {v[-1]['decode_tps']:.1f}" for m, v in got.items()),
              flush=True)
    base = [r["decode_tps"] for r in got["plain"]]
    lines = [f"Speculative decoding ({a.speculate}) on {Path(a.artifact).resolve().name}: edit-style prompt, {a.tokens} "
             f"greedy tokens, {a.threads} threads, CPU {cpu_isa()}, {a.rounds} rounds, every run a fresh process; "
             "medians, and the median over rounds of each run's ratio to the same round's plain run",
             "| decoding | decode tok/s (median) | range | vs plain | acceptance | tokens per step | steps cut by cost "
             "| text as plain |", "|---|---|---|---|---|---|---|---|"]
    rows = []
    for mode, runs in got.items():
        tps = [r["decode_tps"] for r in runs]
        ratio = statistics.median(t / b for t, b in zip(tps, base))
        same = all(r["tokens"] == p["tokens"] for r, p in zip(runs, got["plain"]))
        acc, tps_step, cut = runs[-1]["acceptance"], runs[-1]["tokens_per_step"], runs[-1]["cut"]
        rows.append({"decoding": mode, "decode_tps": tps, "ratio": ratio, "acceptance": acc,
                     "tokens_per_step": tps_step, "cut": cut, "identical": same})
        lines.append(f"| {mode} | {statistics.median(tps):.1f} | {min(tps):.1f}–{max(tps):.1f} | {ratio:.2f}x | "
                     + (f"{acc * 100:.0f} % | {tps_step:.2f} | {cut} |" if acc is not None else "– | 1.00 | – |")
                     + f" {'yes' if same else 'no'} |")
    write_results(a.out, a.name, "\n".join(lines), rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
