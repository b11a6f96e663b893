"""Cost of constrained decoding: decode tok/s with a JSON schema (llguidance mask every token) beside free decoding,
same artifact, same prompt, same run.

    python benchmarks/structured_bench.py [--shape qwen2.5-0.5b] [--recipe R] [--threads 2] [--gen-len 128]

The artifact is the recipe built on a random-weight checkpoint of the shape (cached, see shapes.py). The mask is
applied over the full 151 936-wide logits row; llguidance's own mask work depends on the tokenizer, and these shapes
carry the tiny fixtures' byte-level BPE tokenizer, not Qwen's 151k one (its per-token mask time on the real tokenizer
is larger; llguidance reports tens of microseconds per token on 128k vocabularies).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from shapes import add_speed_args, ensure_artifact, write_results  # noqa: E402

from edgeqwen.runtime.runner import GrammarConstraint, Runner, Sampling  # noqa: E402

SCHEMA = {"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"}}}, "required": ["items"]}


def decode_tps(runner: Runner, ids: list[int], n: int, schema: dict | None, repeats: int) -> tuple[float, int]:
    best, tokens = 0.0, 0
    for _ in range(repeats):
        constraint = GrammarConstraint.json_schema(runner, schema) if schema else None
        s = Sampling(max_new_tokens=n, ignore_eos=schema is None, constraint=constraint)
        t0 = time.perf_counter()
        count, first = 0, None
        for rec in runner.stream(ids, s):
            count += 1
            if first is None:
                first = time.perf_counter()
        elapsed = time.perf_counter() - first
        if count > 1 and elapsed > 0:
            best = max(best, (count - 1) / elapsed)
        tokens = count
        del t0
    return best, tokens


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_speed_args(ap)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    _, art = ensure_artifact(args.shape, args.recipe)
    runner = Runner(art, threads=args.threads)
    ids = runner.encode(runner.apply_chat_template([{"role": "user", "content": "List some Python keywords as JSON."}]))
    free, n_free = decode_tps(runner, ids, args.gen_len, None, args.repeats)
    before = dict(runner.full_rows)
    schema, n_schema = decode_tps(runner, ids, args.gen_len, SCHEMA, args.repeats)
    rows = [("free decoding (anchor)", free, n_free, 1.0), ("JSON schema (llguidance mask)", schema, n_schema, schema / free)]
    reads = {k: (runner.full_rows[k] - before[k]) / (args.repeats * n_schema) for k in before}
    note = (f"; shortlist head: {1 - sum(reads.values()):.0%} of the constrained steps decided by the shortlist, "
            f"{reads['rows']:.0%} by the allowed tokens' rows, {reads['full']:.0%} by the full head"
            if runner.shortlist_k else "")
    text = (f"Constrained decoding, {args.shape} shape ({args.recipe}), {args.threads} threads, best of {args.repeats}"
            f"{note}\n"
            "| decoding | decode tok/s | tokens | vs free |\n|---|---|---|---|\n"
            + "\n".join(f"| {name} | {tps:.1f} | {n} | {ratio:.3f}x |" for name, tps, n, ratio in rows))
    write_results(args.out, f"structured-{args.shape}", text, [{"decoding": r[0], "tps": r[1], "tokens": r[2]} for r in rows])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
