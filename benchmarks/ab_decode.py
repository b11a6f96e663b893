"""Decode speed of two or more artifacts, A/B: each measurement in a fresh process, the artifacts alternated round by
round, paired ratios against the first artifact.

    python benchmarks/ab_decode.py NAME=ARTIFACT NAME2=ARTIFACT2 [...] [--rounds 8] [--threads 2] [--tokens 128]

Why fresh processes: in one process, a second onnxruntime session of the same artifact decodes faster than the first
(3.6-13 % in 18 of 19 interleaved pairs on an AMD EPYC with AVX-512, 2 cores: see the README's Benchmarks section),
so two artifacts loaded side by side in one process compare their load order as much as their graphs. Here every
run is the only session of its process, as in `edgeqwen bench` and the llama.cpp compare, and the order within a
round alternates.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

WORKER = textwrap.dedent("""
    import json, sys, numpy as np
    from edgeqwen.runtime.runner import Runner, Sampling
    art, threads, tokens, runs, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    entries = json.loads(sys.argv[6])  # session config entries, e.g. {"session.intra_op.allow_spinning": "0"}

    class Tuned(Runner):
        def _open_session(self, file, so, genai, providers):
            for key, value in entries.items():
                so.add_session_config_entry(key, value)
            return super()._open_session(file, so, genai, providers)

    r = Tuned(art, threads=threads, verify=False)
    ids = np.random.default_rng(0).integers(100, r.vocab_size - 100, prompt).tolist()
    r.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True))
    out = [r.generate(ids, Sampling(max_new_tokens=tokens, ignore_eos=True)) for _ in range(runs)]
    print("RESULT " + json.dumps({"decode_tps": max(x.decode_tps for x in out), "tokens": out[-1].token_ids}))
""")


def run_once(artifact: str, threads: int, tokens: int, runs: int = 2, prompt: int = 128,
             entries: dict[str, str] | None = None) -> dict:
    """One fresh process: load, warm up, `runs` greedy generations of `tokens` after a `prompt`-token random prompt;
    the best decode tok/s and the last run's tokens."""
    return run_worker(WORKER, [artifact, threads, tokens, runs, prompt, json.dumps(entries or {})], artifact)


def run_worker(code: str, argv: list, what: str) -> dict:
    """`python -c code *argv` in a fresh process; the JSON of its `RESULT ` line (exits naming `what` on failure)."""
    proc = subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        raise SystemExit(f"{what}: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}")
    return json.loads(line[7:])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifacts", nargs="+", help="NAME=ARTIFACT_DIR (the first is the anchor)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--name", help="also write the table to benchmarks/results/NAME.md (and the runs to NAME.json)")
    a = ap.parse_args()
    arts = dict(x.split("=", 1) for x in a.artifacts)
    if len(arts) < 2:
        ap.error("give two or more NAME=ARTIFACT")
    names = list(arts)
    tps: dict[str, list[float]] = {n: [] for n in names}
    tokens: dict[str, list[int]] = {}
    for rnd in range(a.rounds):
        for n in (names if rnd % 2 == 0 else names[::-1]):
            r = run_once(arts[n], a.threads, a.tokens)
            tps[n].append(r["decode_tps"])
            tokens[n] = r["tokens"]
        print(f"round {rnd + 1}/{a.rounds}: " + ", ".join(f"{n} {tps[n][-1]:.1f}" for n in names), file=sys.stderr)
    from edgeqwen.runtime.isa import cpu_isa

    base = names[0]
    lines = [f"decode tok/s, {a.rounds} rounds, each run a fresh process (best of 2 x {a.tokens} greedy tokens after a "
             f"warm-up), {a.threads} threads, CPU {cpu_isa()}, order alternated per round; paired ratio = median over "
             f"rounds of run / {base}",
             f"| artifact | decode tok/s median (range) | paired ratio vs {base} | same greedy tokens as {base} |",
             "|---|---|---|---|"]
    for n in names:
        ratio = statistics.median(x / y for x, y in zip(tps[n], tps[base]))
        lines.append(f"| {n} | {statistics.median(tps[n]):.1f} ({min(tps[n]):.1f}–{max(tps[n]):.1f}) | {ratio:.3f}x | "
                     f"{'yes' if tokens[n] == tokens[base] else 'no'} |")
    print("\n".join(lines))
    if a.name:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from shapes import write_results

        write_results(Path(__file__).resolve().parent / "results", a.name, "\n".join(lines),
                      {"artifacts": arts, "threads": a.threads, "tokens": a.tokens, "cpu": cpu_isa(), "decode_tps": tps})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
