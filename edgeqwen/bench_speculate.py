"""`edgeqwen bench ARTIFACT --speculate lookup|draft=ARTIFACT`: speculative against plain greedy decoding, one process,
one prompt, runs interleaved: decode tok/s of each, the speedup, acceptance, tokens per verify step, and whether the
texts are identical (where they are not: the step they part at and its top-2 margin — a near-tie that the k-token
verify step's other kernel path can tip, see runtime/agreement.py).

The default prompt is edit-style — a passage of the packaged eval text, then its first words again — so a model that
copies from its context (as real models do) answers by repeating much of the prompt: the case prompt lookup is for.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

EVAL_TEXT = Path(__file__).resolve().parent / "data" / "eval.txt"
PASSAGE_TOKENS = 96  # with the restart and 128 new tokens, within the 256 positions the tiny pair trained on
RESTART_TOKENS = 16


def edit_prompt(runner, passage_tokens: int = PASSAGE_TOKENS) -> list[int]:
    """A passage of the eval text, a blank line, then the passage's first RESTART_TOKENS tokens again."""
    text = EVAL_TEXT.read_text(encoding="utf-8")
    start = text.find("\n\n", len(text) // 3) + 2  # a paragraph start, away from the file's head
    ids = runner.encode(text[start:start + 8 * passage_tokens])[:passage_tokens]
    return ids + runner.encode("\n\n") + ids[:RESTART_TOKENS]


def run(artifact: str, speculate: str, gen: int, threads: int, prompt_file: str | None, repeats: int = 3) -> dict:
    from .runtime.agreement import top2_margin
    from .runtime.runner import Runner, Sampling, make_drafter

    runner = Runner(artifact, threads=threads or None, verify=False)
    drafter = make_drafter(speculate, threads or None)
    prompt = runner.encode(Path(prompt_file).read_text(encoding="utf-8")) if prompt_file else edit_prompt(runner)
    s = Sampling(max_new_tokens=gen, ignore_eos=True)
    runner.generate(prompt, Sampling(max_new_tokens=4, ignore_eos=True))  # warm-up: kernels, arenas
    runner.generate(prompt, Sampling(max_new_tokens=8, ignore_eos=True), speculate=drafter)
    plain_s, spec_s = [], []
    for _ in range(repeats):  # interleaved, so a noisy second hits both alike
        t0 = time.perf_counter()
        plain = runner.generate(prompt, s)
        t1 = time.perf_counter()
        spec = runner.generate(prompt, s, speculate=drafter)
        t2 = time.perf_counter()
        plain_s.append(t1 - t0 - plain.ttft_s)
        spec_s.append(t2 - t1 - spec.ttft_s)
    st = drafter.stats
    a, b = plain.token_ids, spec.token_ids
    parted = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), None)
    margin = None
    if parted is not None:  # the plain run's top-2 margin where the texts part
        keep = Sampling(max_new_tokens=parted + 1, ignore_eos=True, keep_logits=True)
        margin = top2_margin(list(runner.stream(prompt, keep))[parted].logits)
    plain_dec, spec_dec = statistics.median(plain_s), statistics.median(spec_s)
    paired = [p / q for p, q in zip(plain_s, spec_s)]  # each run against the plain run beside it: the machine's drift
    return {"artifact": artifact, "speculate": speculate, "prompt_tokens": len(prompt), "generated": len(b),
            "prompt": "file " + prompt_file if prompt_file else "edit-style (eval-text passage, then its start again)",
            "plain_decode_tps": (len(a) - 1) / plain_dec, "speculative_decode_tps": (len(b) - 1) / spec_dec,
            "speedup": statistics.median(paired), "speedups": paired, "verify_steps": st.steps, "drafted": st.drafted,
            "accepted": st.accepted,
            "acceptance": st.acceptance, "tokens_per_step": st.tokens_per_step, "identical": a == b,
            "cost_limited_steps": drafter.cost.limited,
            "step_ms": {w: 1000 * t for w, t in sorted(drafter.cost.step_s.items())},
            "parted_at": parted, "margin_at_parting": margin, "repeats": repeats, "text": runner.decode(b)[:200]}


def bench(artifact: Path, speculate: str, gen: int, threads: int, prompt_file: str | None, repeats: int = 3) -> dict:
    """In a worker process, as the other bench rows are (its own peak RSS, no state shared with the caller)."""
    proc = subprocess.run([sys.executable, "-m", "edgeqwen.bench_speculate", str(artifact), speculate, str(gen),
                           str(threads), prompt_file or "", str(repeats)], capture_output=True, text=True)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        from .errors import EdgeQwenError

        raise EdgeQwenError(f"speculative bench failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1:]}",
                            where="--speculate", hint="`lookup`, or draft=ARTIFACT with the same tokenizer")
    return json.loads(line[7:])


def format_report(r: dict) -> str:
    same = "identical" if r["identical"] else (
        f"parted at token {r['parted_at']} (plain run's top-2 margin {r['margin_at_parting']:.3g}: a near-tie the "
        "verify step's kernels tipped)" if r["parted_at"] is not None else "lengths differ")
    return "\n".join([
        f"{r['artifact']}  (speculate {r['speculate']}, prompt {r['prompt_tokens']} tokens: {r['prompt']}, "
        f"generate {r['generated']}, {r['repeats']} interleaved runs: medians, the speedup the median of each run's "
        "ratio to the plain run beside it)",
        f"{'decoding':<22} {'decode tok/s':>12} {'vs plain':>9}",
        f"{'plain greedy':<22} {r['plain_decode_tps']:>12.1f} {1.0:>8.2f}x",
        f"{'speculative greedy':<22} {r['speculative_decode_tps']:>12.1f} {r['speedup']:>8.2f}x",
        f"acceptance {r['acceptance'] * 100:.0f} % ({r['accepted']} of {r['drafted']} drafted tokens), "
        f"{r['tokens_per_step']:.2f} tokens per verify step ({r['verify_steps']} steps); text: {same}",
        f"draft length cut by the measured step cost in {r.get('cost_limited_steps', 0)} steps; step ms by width: "
        + ", ".join(f"{w}: {ms:.2f}" for w, ms in r.get("step_ms", {}).items())])


if __name__ == "__main__":
    art, spec, n, th, pf, reps = sys.argv[1:7]
    print("RESULT " + json.dumps(run(art, spec, int(n), int(th), pf or None, int(reps))))
