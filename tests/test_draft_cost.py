"""Speculative decoding sizes its draft by what verify steps cost on this machine (`runner.DraftCost`): long drafts
where a k-token step costs little more than one (weight-bound CPUs), none where it costs k steps (arithmetic-bound
CPUs) unless acceptance is high enough to pay — and the text never depends on it."""

from __future__ import annotations

import time

import pytest

from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.runner import DraftCost, Drafter, PromptLookup

# verify-step ms by width on the 0.5B default, measured by benchmarks/verify_cost.py (results/verify-cost-*.md)
AVX512 = {1: 10.89, 2: 17.02, 4: 24.54, 8: 43.83, 16: 75.25}
AVX2 = {1: 36.45, 2: 65.60, 4: 115.31, 8: 185.57, 16: 348.68}


def fed(table: dict[int, float], acceptance: float) -> DraftCost:
    """A DraftCost that has timed these widths (ms) at this acceptance."""
    cost = DraftCost()
    for width, ms in table.items():
        drafted = width - 1
        cost.record(drafted, round(acceptance * drafted), 2e-5 * drafted, ms / 1000)
    cost.acceptance = acceptance
    cost.accept_at = dict.fromkeys(range(1, 17), acceptance)  # every position alike: tokens kept independently
    return cost


def test_draft_length_follows_the_measured_step_cost():
    assert fed(AVX512, 0.8).limit(16) >= 2  # weight-bound: a 3-token draft at 80 % pays (1.3x implied)
    assert fed(AVX512, 0.8).speedup(fed(AVX512, 0.8).limit(16)) > 1.1
    assert fed(AVX2, 0.8).limit(16) == 0  # arithmetic-bound: no length beats plain decoding at 80 %
    high = fed(AVX2, 0.95)
    assert high.limit(16) >= 3 and high.speedup(high.limit(16)) > 1.2  # ... at 95 % a long one does
    assert fed(AVX512, 0.8).limit(1) == 1  # never more than the acceptance rule allows
    assert fed(AVX512, 0.0).limit(8) == 0  # nothing accepted: plain steps


def test_untimed_widths_draft_and_a_plain_step_is_timed():
    cost = DraftCost()
    assert cost.limit(8) == 8  # nothing timed: draft, and time it
    cost.record(8, 8, 1e-5, 0.02)
    assert cost.limit(8) == 8  # one width timed: not enough for a line
    cost.record(4, 4, 1e-5, 0.012)
    assert cost.limit(8) == 0  # wide steps timed, a plain one never: the next step is plain, to time it
    cost.record(0, 0, 0.0, 0.01)
    assert cost.limit(8) > 0  # all accepted, a 9-token step at 2x one: draft


def test_held_at_zero_it_looks_again():
    cost = fed(AVX2, 0.5)
    limits = [cost.limit(4) for _ in range(cost.probe + 1)]
    assert limits[:-1] == [0] * cost.probe and limits[-1] == 4  # one probe after `probe` held steps
    assert cost.limited == cost.probe


def test_probes_that_fail_look_again_less_often_and_a_good_one_resets():
    """A drafter that rarely agrees: each probe rejected doubles the held steps before the next (16, 32, 64, then
    128 at most); once acceptance makes a draft worth it, drafting resumes and a later hold starts from 16 again."""
    cost = fed(AVX2, 0.1)
    gaps, held = [], 0
    while len(gaps) < 5:
        k = cost.limit(4)
        if k:
            gaps.append(held)
            held = 0
            cost.record(k, 0, 1e-4, AVX2[4] / 1000)  # the probe's draft is rejected
        else:
            held += 1
            cost.record(0, 0, 0.0, AVX2[1] / 1000)
    assert gaps == [16, 32, 64, 128, 128], gaps
    for _ in range(40):  # the text turns repetitive: every draft kept
        cost.record(4, 4, 1e-4, AVX2[4] / 1000)
    assert cost.limit(4) > 0 and cost.wait == cost.probe


class Copy(Drafter):
    """Drafts the known continuation (every draft token is accepted)."""

    name = "copy"

    def __init__(self, prompt_len: int, continuation: list[int]):
        self.n, self.cont = prompt_len, continuation

    def propose(self, history, k):
        return self.cont[len(history) - self.n:][:k]


def test_slow_verify_steps_cut_the_draft_and_keep_the_text(artifacts, trained_qwen2):
    """The same runner with verify steps made to cost 20 ms per fed token (an arithmetic-bound machine, exaggerated)
    drafts fewer tokens than the acceptance rule alone would (the anchor does not depend on timings: a loaded
    machine once cut the anchor's own drafts below the slow run's), and emits the same text both ways."""
    runner = Runner(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2))
    ids = runner.encode("A for loop iterates over the items of a sequence. A for loop iterates over")
    s = Sampling(max_new_tokens=32, ignore_eos=True)
    plain = runner.generate(ids, s).token_ids
    # a 60 % acceptor: every third draft position is wrong
    wrongs = [t if i % 3 != 2 else (t + 1) % runner.vocab_size for i, t in enumerate(plain)]
    fast, slow = Copy(len(ids), wrongs), Copy(len(ids), wrongs)
    with pytest.MonkeyPatch.context() as mp:  # the anchor: the acceptance rule's lengths, whatever steps cost
        mp.setattr(DraftCost, "limit", lambda self, k: k)
        assert runner.generate(ids, s, speculate=fast).token_ids == plain
    step = runner.step

    def costly(tokens, *args, **kwargs):
        time.sleep(0.02 * len(tokens))
        return step(tokens, *args, **kwargs)

    runner.step = costly
    try:
        assert runner.generate(ids, s, speculate=slow).token_ids == plain
    finally:
        del runner.step
    assert slow.cost.limited > 0 and slow.stats.drafted < fast.stats.drafted, (slow.stats, fast.stats)
    assert slow.cost.step_s[1] >= 0.02  # a plain step was timed, sleep included (a loaded machine only adds to it)


def test_noisy_timings_and_an_instant_drafter_never_divide_by_zero():
    # a wider step timed faster than a narrower one puts the line through them below zero further out; with a drafter
    # that takes no time (CI hit this: ZeroDivisionError in speedup) the step still counts as at least a plain one
    cost = DraftCost()
    for width, seconds in {1: 0.010, 2: 0.020, 3: 0.004}.items():
        cost.record(width - 1, width - 1, 0.0, seconds)
    assert cost.speedup(7) is not None and cost.speedup(7) > 1  # 8 tokens for one plain step's time
    assert 0 <= cost.limit(8) <= 8
    zero = DraftCost()
    for width in (1, 2):
        zero.record(width - 1, width - 1, 0.0, 0.0)
    assert zero.speedup(1) is None and zero.limit(4) == 4  # nothing measurable: draft and time it


def test_acceptance_in_runs_pays_for_longer_drafts_than_a_per_token_rate():
    """Copying a passage: drafts are kept whole or rejected at their first token. Half the steps keep all 8, half none:
    a per-token rate of 50 % would say a draft of 8 yields 2 tokens; the positions' own rates say 1 + 0.5 * 8 = 5."""
    cost = DraftCost()
    for _ in range(12):
        cost.record(8, 8, 0.0, 0.012)
        cost.record(8, 0, 0.0, 0.012)
        cost.record(0, 0, 0.0, 0.010)
    assert 0.3 < cost.acceptance < 0.7 and cost.accept_at[1] < 0.7 and min(cost.accept_at[m] for m in range(2, 9)) > 0.99
    assert cost.expected_tokens(8) > 4 and cost.speedup(8) > 3  # 9-token step timed at 1.2x a plain one
    assert cost.limit(8) == 8


class _Sized(DraftCost):
    """Records the lengths it is asked to size and allows at most 2."""

    def __init__(self):
        super().__init__()
        self.asked = []

    def limit(self, k):
        self.asked.append(k)
        return min(k, 2)


class _Model(Drafter):
    """A drafter whose proposals would cost a model's runs: records the lengths it is asked for."""

    def __init__(self):
        self.asked = []

    def propose(self, history, k):
        self.asked.append(k)
        return [7] * k


def test_a_free_drafter_is_sized_on_the_draft_it_found_and_a_model_before_it_runs():
    look = PromptLookup()
    look.cost = _Sized()
    assert look.draft([1, 2, 3], 8, room=10) == [] and look.cost.asked == []  # no match: nothing to size
    assert look.draft([1, 2, 3, 4, 1, 2], 8, room=10) == [3, 4] and look.cost.asked == [4]  # found 4, sized to 2
    assert look.draft([1, 2, 3, 4, 1, 2], 8, room=1) == [3] and look.cost.asked == [4, 1]  # the room first
    model = _Model()
    model.cost = _Sized()
    assert model.draft([1, 2], 8, room=10) == [7, 7] and model.asked == [2] and model.cost.asked == [8]
    assert model.draft([1, 2], 8, room=1) == [7] and model.asked == [2, 1]
    assert model.draft([1, 2], 8, room=0) == [] and model.asked == [2, 1]  # no room: the model does not run
