"""`edgeqwen tune`: candidates measured, smallest within budget published, impossible budgets explained."""

from __future__ import annotations

import json

import pytest

from edgeqwen.errors import EdgeQwenError
from edgeqwen.package import verify_artifact
from edgeqwen.tune import default_grid, parse_budget, tune

_BY_LABEL = {c[0]: c for c in default_grid()}
GRID = [_BY_LABEL[k] for k in ("rtn-sym-b32-int4head", "rtn-asym-b32-int8head", "int8")]  # builder-like int4, default int4, int8


def test_tune_picks_smallest_candidate_within_budget(trained_qwen2, tmp_path):
    chosen, cands = tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=0.08"), tmp_path / "out", grid=GRID)
    by = {c.label: c for c in cands}
    assert not by["rtn-sym-b32-int4head"].meets  # the builder-style default misses this budget on this model
    assert by["int8"].meets and by["rtn-asym-b32-int8head"].meets
    assert chosen.label == "rtn-asym-b32-int8head" and chosen.size_mb < by["int8"].size_mb
    assert not any(verify_artifact(tmp_path / "out").values())
    report = json.loads((tmp_path / "out" / "tune.json").read_text())
    assert report["chosen"] == chosen.label and len(report["candidates"]) == 3
    assert (tmp_path / "out" / "tune_frontier.png").read_bytes()[:4] == b"\x89PNG"


def test_budget_no_candidate_meets_reports_best(trained_qwen2, tmp_path):
    with pytest.raises(EdgeQwenError) as info:
        tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=1e-9"), tmp_path / "out", grid=GRID[1:])
    assert "no candidate meets the budget" in str(info.value) and "best found: int8" in str(info.value)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("text, match", [("kld", "needs a number"), ("speed=3", "unknown budget metric 'speed'"), ("", "empty budget")])
def test_bad_budget(text, match):
    with pytest.raises(EdgeQwenError, match=match):
        parse_budget(text)


def test_tune_candidates_build_on_ray_like_on_the_local_pool(trained_qwen2, tmp_path):
    """`tune --executor ray`: the same candidates, the same measurements, the same choice as the local pool."""
    runs = {}
    for executor in ("local", "ray"):
        chosen, cands = tune("tiny-qwen2/cpu-x86_64-int4", str(trained_qwen2), parse_budget("kld=0.08"),
                             tmp_path / executor, grid=GRID[:2], executor=executor, workers=2)
        runs[executor] = (chosen.label, {c.label: (c.size_mb, c.accuracy["kld_mean"]) for c in cands})
    assert runs["local"] == runs["ray"] and runs["ray"][0] == "rtn-asym-b32-int8head"
