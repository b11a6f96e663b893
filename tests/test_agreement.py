"""edgeqwen.runtime.agreement on made-up logits: what two runs may differ in (near-ties, rounding) and what they may not."""

from __future__ import annotations

import numpy as np

from edgeqwen.runtime.agreement import SAMPLED_PART_FLOOR, compare_runs, compare_text, top2_margin


def rows(*tops):
    """One logits row per step over 4 tokens: token 0 at `top`, token 1 at 1.0, the rest at 0."""
    return [np.array([t, 1.0, 0.0, 0.0], np.float32) for t in tops]


def test_greedy_tokens_may_part_only_at_a_near_tie():
    ref = rows(5.0, 1.05, 5.0)
    assert top2_margin(ref[1]) == np.float32(1.05) - np.float32(1.0)
    tied = compare_runs(ref, [0, 0, 0], [r + np.float32(0.01) * (i == 1) for i, r in enumerate(ref)], [0, 1, 2], 0.1)
    assert tied.ok and tied.diverged_at == 1 and tied.steps == 2  # compared no further than the parting
    decided = compare_runs(ref, [0, 0, 0], ref, [1, 0, 0], 0.1)
    assert not decided.ok and "exceeds 2 x tol" in decided.failure
    drift = compare_runs(ref, [0, 0, 0], [r + 0.2 for r in ref], [0, 0, 0], 0.1)
    assert not drift.ok and "logits differ by" in drift.failure


def test_sampled_tokens_may_part_only_where_the_logits_differ():
    ref = rows(5.0, 5.0)
    moved = [ref[0], ref[1] + np.float32(0.05)]
    assert compare_runs(ref, [0, 0], moved, [0, 3], 0.1, greedy=False).ok  # the draw fell across a moved boundary
    same = compare_runs(ref, [0, 0], [r + SAMPLED_PART_FLOOR / 10 for r in ref], [0, 3], 0.1, greedy=False)
    assert not same.ok and "same seed" in same.failure  # same distribution, same seed, another token: a fault


def test_lengths_must_match_unless_the_runs_parted():
    ref = rows(5.0, 5.0, 5.0)
    assert not compare_runs(ref, [0, 0, 0], ref[:2], [0, 0], 0.1).ok


def test_text_may_part_from_the_reference_only_at_a_near_tie():
    decode = "".join  # token ids are characters here
    ref = rows(5.0, 1.05, 5.0)
    assert compare_text(ref, ["a", "b", "c"], "abc", decode, 0.1).ok
    assert compare_text(ref, ["a", "b", "c"], "axyz", decode, 0.1).ok  # parts at step 1, a near-tie
    assert not compare_text(ref, ["a", "b", "c"], "xbc", decode, 0.1).ok  # parts at step 0, decided
    assert not compare_text(ref, ["a", "b", "c"], "abcd", decode, 0.1).ok  # runs on past the reference
