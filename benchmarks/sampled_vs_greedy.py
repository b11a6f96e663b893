"""What sampling costs against greedy decoding, in one process: the artifact's sampled settings (Qwen's generation
config: temperature 0.7, top-k 20, top-p 0.8, repetition penalty 1.05) and greedy, interleaved, medians, as a ratio.

    python benchmarks/sampled_vs_greedy.py [--shape qwen2.5-0.5b] [--recipe R] [--threads 2] [--repeats 7]

Across processes (llama_cpp_compare.py's rows) the spread between runs is larger than the difference; here both
decode on one session, alternating which goes first each round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import add_speed_args, ensure_artifact, write_results  # noqa: E402

from edgeqwen.runtime.runner import Runner, Sampling  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(ap)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()
    _, art = ensure_artifact(args.shape, args.recipe)
    r = Runner(art, threads=args.threads, verify=False)
    ids = np.random.default_rng(0).integers(100, 9000, args.prompt_len).tolist()
    greedy = Sampling(max_new_tokens=args.gen_len, ignore_eos=True)
    sampled = Sampling(max_new_tokens=args.gen_len, ignore_eos=True, seed=1, temperature=0.7, top_k=20, top_p=0.8,
                       repetition_penalty=1.05)
    runs = {"greedy": greedy, "sampled": sampled}
    for s in runs.values():  # warm-up: kernels, arenas
        r.generate(ids, s)
    tps: dict[str, list[float]] = {name: [] for name in runs}
    for i in range(args.repeats):
        for name in (runs if i % 2 == 0 else reversed(list(runs))):
            tps[name].append(r.generate(ids, runs[name]).decode_tps)
    med = {name: statistics.median(v) for name, v in tps.items()}
    head = (f"shortlist head of {r.shortlist_k} (sampling reads it: {not r.full_head_for(sampled)})" if r.shortlist_k
            else "full head")
    text = (f"Sampled vs greedy decode, {args.shape} shape ({args.recipe}, {head}), {args.threads} threads, "
            f"{args.prompt_len} prompt / {args.gen_len} new tokens, medians of {args.repeats} interleaved runs, one process\n"
            "| decoding | decode tok/s (range) | vs greedy |\n|---|---|---|\n"
            + "\n".join(f"| {name} | {med[name]:.1f} ({min(tps[name]):.1f}–{max(tps[name]):.1f}) | "
                        f"{med[name] / med['greedy']:.3f}x |" for name in runs))
    write_results(args.out, f"sampled-vs-greedy-{args.shape}", text, {"tps": tps, "median": med})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
