"""Do two runs of one artifact agree? Per-step logits within a tolerance, greedy tokens where the choice is decided.

onnxruntime promises no bitwise equality across instruction sets (AVX2, AVX-512, NEON), batch shapes (MatMulNBits
takes other code paths per M) or execution providers (WebGPU computes fp32 activations where the CPU's
accuracy_level 4 quantizes them to int8). Two correct runs can therefore pick different tokens where the top two
logits are nearly tied. What they must share: every step's logits within `tol`, and the same greedy token wherever
the top-2 margin exceeds 2 x tol (with every logit within tol, no other token can overtake the top one there).
After the first token that differs at a near-tie the two runs read different text and are compared no further.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Agreement", "FP32_TOL", "INT8_ACTIVATION_TOL", "SAMPLED_PART_FLOOR", "compare_runs", "compare_text",
           "top2_margin", "step_logits"]

# Logit tolerance between two correct runs of one int4 artifact whose MatMulNBits quantize activations to int8
# (accuracy_level 4) on one side or both: kernels that quantize at other points (AVX2 paths per batch shape, NEON,
# WebGPU's fp32 activations) move tiny-qwen2's logits (range about ±15) by up to ~0.1 (measured: up to 0.134 batched vs lone
# under qemu -cpu Haswell). A wrong KV row or position moves them by whole units.
INT8_ACTIVATION_TOL = 0.25
# Two fp32 implementations of one graph (onnxruntime vs PyTorch, other onnxruntime versions or providers with fp32
# activations): measured max |logit diff| about 1e-5 on the tiny models; a wrong KV row or position moves them by units.
FP32_TOL = 1e-3
# Sampled runs with the same seed draw the same token from the same logits: they may part only at a step whose logits
# differ by more than rounding of one computation (measured: 2.4e-7 to 4e-6 batched vs lone on an AVX-512 host).
SAMPLED_PART_FLOOR = 1e-5


def top2_margin(logits) -> float:
    """Largest logit minus the second largest."""
    row = np.asarray(logits, dtype=np.float32).ravel()
    top = np.partition(row, row.size - 2)[-2:]
    return float(top[1] - top[0])


@dataclass(frozen=True)
class Agreement:
    tol: float  # logit tolerance (absolute)
    steps: int  # steps compared (up to and including the first near-tie divergence)
    max_diff: float  # largest |logit difference| over the compared steps
    diverged_at: int | None = None  # first step whose tokens differ at a near-tie (allowed), else None
    margin_at_divergence: float | None = None
    failure: str | None = None  # why the runs disagree beyond the tolerance; None = they agree

    @property
    def ok(self) -> bool:
        return self.failure is None

    def summary(self) -> str:
        diff = "text only" if self.max_diff != self.max_diff else f"max |logit diff| {self.max_diff:.3g}"  # NaN: text
        head = f"{self.steps} steps, {diff} (tol {self.tol:g})"
        if self.diverged_at is not None:
            head += f", tokens part at step {self.diverged_at} (near-tie, top-2 margin {self.margin_at_divergence:.3g})"
        return head if self.ok else f"{head}: {self.failure}"


def compare_runs(ref_logits, ref_tokens, got_logits, got_tokens, tol: float, greedy: bool = True) -> Agreement:
    """Compare run `got` with run `ref`, step by step: logits[i] is the row token[i] was chosen from.

    greedy: a token that differs where ref's top-2 margin exceeds 2 x tol is a failure. Sampled runs (greedy=False)
    may part at any step whose logits really differ (the draw can fall on either side of a boundary that moved by
    rounding): their logits are compared up to that step. Parting where every logit agrees within SAMPLED_PART_FLOOR
    is a failure (the same distribution and the same seed drew another token: a sampling or seeding fault)."""
    n = min(len(ref_logits), len(got_logits), len(ref_tokens), len(got_tokens))
    worst = 0.0
    for i in range(n):
        a = np.asarray(ref_logits[i], dtype=np.float32).ravel()
        b = np.asarray(got_logits[i], dtype=np.float32).ravel()
        if a.shape != b.shape:
            return Agreement(tol, i + 1, worst, failure=f"step {i}: logits of {a.size} vs {b.size} tokens")
        diff = float(np.max(np.abs(a - b)))
        worst = max(worst, diff)
        if not diff <= tol:  # NaN fails too
            return Agreement(tol, i + 1, worst, failure=f"step {i}: logits differ by {diff:.3g} > tol {tol:g}")
        if int(ref_tokens[i]) != int(got_tokens[i]):
            margin = top2_margin(a)
            if greedy and margin > 2 * tol:
                return Agreement(tol, i + 1, worst, i, margin, failure=(
                    f"step {i}: token {got_tokens[i]} != {ref_tokens[i]} where the top-2 margin {margin:.3g} "
                    f"exceeds 2 x tol"))
            if not greedy and diff <= SAMPLED_PART_FLOOR:
                return Agreement(tol, i + 1, worst, i, margin, failure=(
                    f"step {i}: sampled token {got_tokens[i]} != {ref_tokens[i]} from logits equal within "
                    f"{diff:.3g} (same seed, same distribution)"))
            return Agreement(tol, i + 1, worst, i, margin)
    if len(ref_tokens) != len(got_tokens):
        return Agreement(tol, n, worst, failure=f"lengths differ ({len(ref_tokens)} vs {len(got_tokens)} tokens) "
                                                "with no token parting them")
    return Agreement(tol, n, worst)


def compare_text(ref_logits, ref_tokens, text: str, decode, tol: float) -> Agreement:
    """A greedy reference run (its logits and tokens) vs another run's text only (a server stream): equal text, or text
    that parts from the reference at a step whose top-2 margin is within 2 x tol. `decode`: token ids -> text."""
    for i in range(len(ref_tokens)):
        prefix = decode(list(ref_tokens[:i + 1])).rstrip("\ufffd")  # a token ending inside a character
        if not text.startswith(prefix):
            margin = top2_margin(ref_logits[i])
            failure = None if margin <= 2 * tol else (
                f"step {i}: the text parts from the reference where the top-2 margin {margin:.3g} exceeds 2 x tol")
            return Agreement(tol, i + 1, float("nan"), i, margin, failure)
    whole = decode(list(ref_tokens))
    if text != whole:
        return Agreement(tol, len(ref_tokens), float("nan"),
                         failure=f"the text goes on past the reference's {len(ref_tokens)} tokens: {text[len(whole):][:40]!r}")
    return Agreement(tol, len(ref_tokens), float("nan"))


def step_logits(records) -> tuple[list[np.ndarray], list[int]]:
    """(logits rows, tokens) of a stream of Records generated with Sampling(keep_logits=True)."""
    rows, toks = [], []
    for rec in records:
        if rec.logits is None:
            raise ValueError("records carry no logits: generate with Sampling(keep_logits=True)")
        rows.append(rec.logits)
        toks.extend(rec.token_ids)
    return rows, toks
