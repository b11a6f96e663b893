"""`edgeqwen tune`: candidates measured, smallest within budget published, impossible budgets explained.

The candidates build once for the module, on the Ray executor with two workers (test_matrix proves Ray and the local
pool build byte-identical artifacts); the selection rules are then checked on those measurements. That module fixture
takes over a minute on 2 cores (Ray's start and three builds), so its tests are `slow` (CI's own step); the default run
keeps a whole `tune` on the local executor (the impossible budget)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.package import verify_artifact
from edgeqwen.tune import Candidate, default_grid, parse_budget, select, tune

_BY_LABEL = {c[0]: c for c in default_grid()}
GRID = [_BY_LABEL[k] for k in ("rtn-sym-b32-int4head", "rtn-asym-b32-int8head", "int8")]  # builder-like int4, default int4, int8


@pytest.fixture(scope="module")
def tuned(trained_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    chosen, cands = tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=0.08"), out, grid=GRID,
                         executor="ray", workers=2)
    return out, chosen, cands


@pytest.mark.slow
def test_tune_picks_smallest_candidate_within_budget(tuned):
    out, chosen, cands = tuned
    by = {c.label: c for c in cands}
    assert not by["rtn-sym-b32-int4head"].meets  # the builder-style default misses this budget on this model
    assert by["int8"].meets and by["rtn-asym-b32-int8head"].meets
    assert chosen.label == "rtn-asym-b32-int8head" and chosen.size_mb < by["int8"].size_mb
    assert chosen.path == out and not any(verify_artifact(out).values())
    report = json.loads((out / "tune.json").read_text())
    assert report["chosen"] == chosen.label and len(report["candidates"]) == 3
    assert (out / "tune_frontier.png").read_bytes()[:4] == b"\x89PNG"
    assert all(c.decode_tps > 0 and 0 < c.accuracy["kld_mean"] < 1 for c in cands)


@pytest.mark.slow
def test_selection_follows_the_budget_and_objective(tuned):
    _, _, cands = tuned
    assert select(cands, parse_budget("kld=0.08")).label == "rtn-asym-b32-int8head"
    assert select(cands, parse_budget("kld=1")).label == "rtn-sym-b32-int4head"  # everything passes: the smallest
    fastest = max(cands, key=lambda c: c.decode_tps)
    assert select(cands, parse_budget("kld=1"), objective="speed").label == fastest.label
    with pytest.raises(EdgeQwenError) as info:
        select(cands[1:], parse_budget("kld=1e-9"))
    assert "no candidate meets the budget" in str(info.value) and "best found: int8" in str(info.value)


def _cand(label, size_mb, kld, tps):
    acc = {"ppl_ratio": 1 + kld, "kld_mean": kld, "kld_p99": 5 * kld, "top1": 1 - kld}
    return Candidate(label, Path(label), size_mb, acc, tps, meets=False)


def test_selection_rules_on_given_measurements():
    """select() alone, on measurements given here (the slow tests above check it on built candidates)."""
    cands = [_cand("small-loose", 1.0, 0.09, 900.0), _cand("mid", 1.5, 0.02, 700.0), _cand("big-tight", 3.0, 0.001, 950.0)]
    assert select(cands, parse_budget("kld=0.05")).label == "mid"  # the smallest within budget, not the smallest
    assert select(cands, parse_budget("kld=1")).label == "small-loose"
    assert select(cands, parse_budget("kld=1"), objective="speed").label == "big-tight"
    assert select(cands, parse_budget("kld=0.05"), objective="speed").label == "big-tight"
    with pytest.raises(EdgeQwenError) as info:
        select(cands, parse_budget("kld=1e-4"))
    assert "best found: big-tight (KLD 0.0010" in str(info.value) and "| mid | 1.50 |" in str(info.value)


def test_budget_no_candidate_meets_leaves_no_output(trained_qwen2, tmp_path):
    with pytest.raises(EdgeQwenError, match="no candidate meets the budget.*best found: int8"):
        tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=1e-9"), tmp_path / "out", grid=GRID[2:])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tune-*"))


@pytest.mark.parametrize("text, match", [("kld", "needs a number"), ("speed=3", "unknown budget metric 'speed'"), ("", "empty budget")])
def test_bad_budget(text, match):
    with pytest.raises(EdgeQwenError, match=match):
        parse_budget(text)
