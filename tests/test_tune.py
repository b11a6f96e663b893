"""`edgeqwen tune`: candidates measured, smallest within budget published, impossible budgets explained.

The candidates build once for the module, on the Ray executor with two workers (test_matrix proves Ray and the local
pool build byte-identical artifacts); the selection rules are then checked on those measurements."""

from __future__ import annotations

import json

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.package import verify_artifact
from edgeqwen.tune import default_grid, parse_budget, select, tune

_BY_LABEL = {c[0]: c for c in default_grid()}
GRID = [_BY_LABEL[k] for k in ("rtn-sym-b32-int4head", "rtn-asym-b32-int8head", "int8")]  # builder-like int4, default int4, int8


@pytest.fixture(scope="module")
def tuned(trained_qwen2, tmp_path_factory):
    out = tmp_path_factory.mktemp("tune") / "out"
    chosen, cands = tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=0.08"), out, grid=GRID,
                         executor="ray", workers=2)
    return out, chosen, cands


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


def test_selection_follows_the_budget_and_objective(tuned):
    _, _, cands = tuned
    assert select(cands, parse_budget("kld=0.08")).label == "rtn-asym-b32-int8head"
    assert select(cands, parse_budget("kld=1")).label == "rtn-sym-b32-int4head"  # everything passes: the smallest
    fastest = max(cands, key=lambda c: c.decode_tps)
    assert select(cands, parse_budget("kld=1"), objective="speed").label == fastest.label
    with pytest.raises(EdgeQwenError) as info:
        select(cands[1:], parse_budget("kld=1e-9"))
    assert "no candidate meets the budget" in str(info.value) and "best found: int8" in str(info.value)


def test_budget_no_candidate_meets_leaves_no_output(trained_qwen2, tmp_path):
    with pytest.raises(EdgeQwenError, match="no candidate meets the budget.*best found: int8"):
        tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=1e-9"), tmp_path / "out", grid=GRID[2:])
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tune-*"))


@pytest.mark.parametrize("text, match", [("kld", "needs a number"), ("speed=3", "unknown budget metric 'speed'"), ("", "empty budget")])
def test_bad_budget(text, match):
    with pytest.raises(EdgeQwenError, match=match):
        parse_budget(text)
