"""`mixed_precision: auto`: the choice (pure, table-tested on synthetic measurements) and the measurement itself
(on the trained tiny models: real weights, real calibration text)."""

from __future__ import annotations

import json

import pytest

from edgeqwen.planner.mixed import choose
from edgeqwen.planner.budget import grid_for

from .helpers.sensitivity import FORMATS, NODES, record

def pick(sens, target=0.01, cap=None, objective="fewest_bytes", whole=True, base_block=128, strict=True, gate=None):
    return choose(sens, nodes_for=NODES, base_bits=4, base_block=base_block, symmetric=False, formats=FORMATS,
                  whole_groups=whole, scale_bytes=4, target_kld=target, max_bits_per_weight=cap, objective=objective,
                  strict_cap=strict, gate_kld=gate)


def test_nothing_upgraded_when_the_base_meets_the_target():
    c = pick(record(4, lambda i, k: 0.0005), target=0.015)
    assert c.node_settings == {} and c.summary["met"] and c.summary["planned_kld"] == pytest.approx(0.01)
    assert c.summary["bits_per_weight"] == c.summary["base_bits_per_weight"] < 4.5


@pytest.mark.parametrize("layers", [3, 6, 28])
def test_the_most_sensitive_matrices_are_upgraded_first_on_any_layer_count(layers):
    """Sensitivity concentrated in the first and last layers' down projections (as on real Qwens): those go to int8,
    nothing is named by index in the rule, and the planned KLD meets the target."""
    hot = {(0, "mlp/down_proj"), (layers - 1, "mlp/down_proj")}
    c = pick(record(layers, lambda i, k: 0.02 if (i, k) in hot else 0.004 / (5 * layers)), target=0.012)
    assert c.summary["met"] and c.summary["planned_kld"] <= 0.012
    assert set(c.node_settings) == {f"/model/layers.{i}/mlp/down_proj/MatMul" for i in (0, layers - 1)}
    assert any(s["bits"] == 8 for s in c.node_settings.values())
    assert c.summary["bits_per_weight"] > c.summary["base_bits_per_weight"]


def test_a_size_cap_binds_and_says_so():
    sens = record(4, lambda i, k: 0.01)
    free = pick(sens, target=0.001)
    capped = pick(sens, target=0.001, cap=4.6)
    assert free.summary["bits_per_weight"] > 4.6 >= capped.summary["bits_per_weight"]
    assert not capped.summary["met"] and any(code == "mixed.cap" for code, _ in capped.decisions)
    assert capped.summary["planned_kld"] > free.summary["planned_kld"]
    soft = pick(sens, target=0.001, cap=4.6, strict=False)  # the recipes' default: the target wins, and says so
    assert soft.summary["met"] and soft.summary["cap_exceeded"] and soft.summary["bits_per_weight"] > 4.6
    assert any(code == "mixed.cap_exceeded" for code, _ in soft.decisions)
    easy = pick(record(4, lambda i, k: 0.0001), target=0.015, cap=4.6, strict=False)
    assert not easy.summary["cap_exceeded"] and easy.summary["bits_per_weight"] <= 4.6
    spend = pick(sens, target=0.5, cap=4.6, objective="best_accuracy")  # the target is met already; it still spends
    assert spend.summary["bits_per_weight"] == pytest.approx(capped.summary["bits_per_weight"], abs=0.05)


def test_a_soft_cap_gives_way_only_where_the_plan_within_it_would_miss_the_gate():
    """The recipes' soft cap: held while the best plan within it is predicted under the gate's KLD (the target is then
    missed, and the plan says so), given up for the target where it is predicted over; a measured miss (the build's
    scaled predictions) opens it."""
    sens = record(4, lambda i, k: 0.01)
    capped = pick(sens, target=0.001, cap=4.6)
    within = capped.summary["planned_kld"]
    kept = pick(sens, target=0.001, cap=4.6, strict=False, gate=within * 1.1)
    assert kept.node_settings == capped.node_settings and not kept.summary["cap_exceeded"]
    assert kept.summary["bits_per_weight"] <= 4.6 and not kept.summary["met"]
    assert kept.summary["capped_kld"] == pytest.approx(within)
    assert [code for code, _ in kept.decisions] == ["mixed.auto", "mixed.cap_kept"]
    opened = pick(sens, target=0.001, cap=4.6, strict=False, gate=within * 0.9)
    assert opened.summary["cap_exceeded"] and opened.summary["met"] and opened.summary["bits_per_weight"] > 4.6
    assert any(code == "mixed.cap_exceeded" and f"{within:.4f}" in text for code, text in opened.decisions)
    rescaled = pick({**sens, "kld_scale": 1.25}, target=0.001, cap=4.6, strict=False, gate=within * 1.1)
    assert rescaled.summary["cap_exceeded"] and rescaled.summary["met"]


CAPPED_RECIPE = """\
version: 1
model: embedded:tiny-qwen2
target: cpu-x86_64
precision: int4
quantization:
  algorithm: rtn
  symmetric: false
  lm_head: int8
  block_size: 128
  mixed_precision: {mode: auto, max_bits_per_weight: 4.6}
accuracy: {max_kld: 0.03}
"""


def test_the_build_keeps_a_soft_cap_inside_the_gate_and_gives_it_up_after_a_measured_miss(tmp_path):
    """Through the planner's rules: the capped plan predicted inside the gate (0.03) but over the half-gate target
    keeps the cap; the same measurement after a measured miss (the build's replan: scaled, with a new target) goes
    past it to the target, whatever the scaled prediction within the cap says."""
    from edgeqwen.checkpoint import resolve_checkpoint
    from edgeqwen.planner import plan as make_plan
    from edgeqwen.recipe import load_recipe

    path = tmp_path / "capped.yaml"
    path.write_text(CAPPED_RECIPE)
    resolved, ckpt = load_recipe(str(path)), resolve_checkpoint("embedded:tiny-qwen2")
    layers = ckpt.config["num_hidden_layers"]
    sens = {**record(layers, lambda i, k: 0.044 / (5 * layers)), "head": {"int8/b128": 0.0}}  # ~0.022 within the cap
    kept = make_plan(resolved, ckpt, sensitivity=sens).mixed
    assert not kept.cap_exceeded and not kept.met and kept.bits_per_weight <= 4.6
    assert kept.target_kld < kept.capped_kld <= kept.gate_kld == 0.03
    assert 1.25 * kept.capped_kld <= 0.03  # so only the replan itself, not the scaled prediction, opens the cap below
    after_miss = make_plan(resolved, ckpt, sensitivity={**sens, "kld_scale": 1.25, "replan_target_kld": 0.015}).mixed
    assert after_miss.cap_exceeded and after_miss.met and after_miss.bits_per_weight > 4.6


def with_zero_points(sens: dict, helps) -> dict:
    """A record measured over a symmetric base with each format's "+zp" error: `helps(layer, kind)` is the share of
    the symmetric error left with zero points (skewed weights: far below 1; centred ones: near 1)."""
    for g in sens["groups"]:
        g["err"] = {**g["err"], **{f"{k}+zp": v * helps(g["layer"], g["kind"]) for k, v in g["err"].items()}}
    return {**sens, "symmetric": True, "zero_points": True}


def test_zero_points_are_kept_only_where_the_accuracy_they_buy_is_worth_their_time():
    """Over a symmetric base, zero points are an upgrade priced at the target's measured kernel cost: a matrix whose
    weights are skewed (zero points cut its error to a tenth) keeps them; one whose weights are centred (3 %) goes
    to a smaller block or stays symmetric; at a high enough price nothing keeps them; without a price the "+zp"
    formats are never offered. The cap counts real bytes."""
    skewed = {(0, "mlp/down_proj")}
    sens = with_zero_points(record(4, lambda i, k: 0.002), lambda i, k: 0.1 if (i, k) in skewed else 0.97)

    def zp(cost, **kw):
        return choose(sens, nodes_for=NODES, base_bits=4, base_block=128, symmetric=True, formats=FORMATS,
                      whole_groups=True, scale_bytes=4, target_kld=kw.get("target", 0.0315), max_bits_per_weight=None,
                      objective="fewest_bytes", zero_point_cost=cost)

    c = zp(0.08)
    asym = {n for n, s in c.node_settings.items() if s.get("scheme") == "asym"}
    assert asym == {"/model/layers.0/mlp/down_proj/MatMul"}, c.node_settings
    assert c.summary["met"] and c.summary["zero_point_cost"] == 0.08
    assert c.summary["upgraded"]["int4/b128+zp"] == ["layers.0/mlp/down_proj"]
    assert any(code == "mixed.zero_points" and "1 of 20" in text for code, text in c.decisions)
    dear = zp(0.9)  # zero points priced at 90 % of the bytes: a smaller block buys the accuracy for less
    assert not any(s.get("scheme") == "asym" for s in dear.node_settings.values()) and dear.summary["met"]
    unpriced = zp(None)
    assert unpriced.summary["zero_point_cost"] is None and "+zp" not in json.dumps(unpriced.summary)
    # zero points add real bytes: with their price near zero they are taken everywhere they help, within the cap
    cheap = choose(sens, nodes_for=NODES, base_bits=4, base_block=128, symmetric=True, formats=FORMATS,
                   whole_groups=True, scale_bytes=4, target_kld=0.0, max_bits_per_weight=4.3,
                   objective="best_accuracy", zero_point_cost=0.001)
    assert cheap.summary["bits_per_weight"] <= 4.3
    assert sum(s.get("scheme") == "asym" for s in cheap.node_settings.values()) > 1


def test_the_plan_prices_zero_points_only_on_a_target_that_measured_them(tmp_path):
    """`zero_points: auto` on cpu-x86_64 (its int4_zero_point_cost measured): a symmetric base, the price in the plan,
    the "+zp" formats asked of the measurement. On a target without a measured price (cpu-arm64): zero points kept
    as the recipe says, and the plan says why."""
    from edgeqwen.checkpoint import resolve_checkpoint
    from edgeqwen.planner import plan as make_plan
    from edgeqwen.recipe import load_recipe
    from edgeqwen.targets import load_target

    text = CAPPED_RECIPE.replace("algorithm: rtn", "algorithm: gptq").replace(
        "max_bits_per_weight: 4.6}", "max_bits_per_weight: 4.6, zero_points: auto}")
    ckpt = resolve_checkpoint("embedded:tiny-qwen2")
    layers = ckpt.config["num_hidden_layers"]
    for target in ("cpu-x86_64", "cpu-arm64"):
        path = tmp_path / f"{target}.yaml"
        path.write_text(text.replace("target: cpu-x86_64", f"target: {target}"))
        resolved = load_recipe(str(path))
        pending = make_plan(resolved, ckpt)
        cost = load_target(target).int4_zero_point_cost
        if target == "cpu-x86_64":
            assert cost is not None and pending.symmetric and pending.mixed.zero_point_cost == cost
            assert any(d.code == "zero_points.auto" for d in pending.decisions)
            sens = with_zero_points({**record(layers, lambda i, k: 0.02 / (5 * layers)), "head": {"int8/b128": 0.0}},
                                    lambda i, k: 0.1 if (i, k) == (1, "mlp/down_proj") else 0.97)
            planned = make_plan(resolved, ckpt, sensitivity=sens)
            assert planned.symmetric and planned.mixed.zero_point_cost == cost
            asym = [n for n, s in planned.node_settings.items() if s.scheme is not None and s.scheme.value == "asym"]
            assert asym == ["/model/layers.1/mlp/down_proj/MatMul"], planned.node_settings
        else:
            assert cost is None and not pending.symmetric and pending.mixed.zero_point_cost is None
            assert any(d.code == "zero_points.kept" and "int4_zero_point_cost" in d.message for d in pending.decisions)


def test_scaled_predictions_plan_more_bytes():
    sens = record(4, lambda i, k: 0.003 * (1 + i))
    once = pick(sens, target=0.03)
    again = pick({**sens, "kld_scale": 3.0}, target=0.03)
    assert again.summary["bits_per_weight"] > once.summary["bits_per_weight"] and again.summary["met"]


def test_uneven_k_takes_a_block_that_divides_it_for_whole_group_quantizers():
    sens = record(2, lambda i, k: 0.0001)
    for g in sens["groups"]:
        g["shapes"] = [[160, n] for _, n in g["shapes"]]
    c = pick(sens, target=0.5)  # K=160 is no whole number of 128- or 64-blocks: 32 is the base there
    assert {s["group_size"] for s in c.node_settings.values()} == {32}
    assert not pick(sens, target=0.5, whole=False).node_settings  # RTN pads: the base block stays


def test_measurement_on_a_trained_model(trained_qwen2, tmp_path):
    """The real measurement: every layer × kind measured, the fp32 rerun is exact, KLDs are positive, int8 errors
    are far below int4's, and an artifact's node names come out of the choice."""
    from edgeqwen.planner.sensitivity import measure

    cfg = {"model": str(trained_qwen2), "calib_text": str(trained_qwen2.parent.parent / "calib.txt"), "samples": 2,
           "seq_len": 64, "base_bits": 4, "base_block": 128, "symmetric": True, "zero_points": True,
           "grid": grid_for((4, 128), FORMATS), "nodes_for": NODES, "head_formats": [(8, 128), (4, 32)],
           "table_formats": [], "threads": 1}
    rec = measure(cfg)
    json.dumps(rec)  # what the child process writes
    assert len(rec["groups"]) == 4 * 5 and rec["tied"] and rec["table"] == {}
    assert rec["noise_floor_kld"] < 1e-6
    for g in rec["groups"]:
        assert g["kld"] > rec["noise_floor_kld"]
        assert g["err"]["int8/b128"] < g["err"]["int4/b32"] < g["err"]["int4/b128"]
        assert g["err"]["int4/b128+zp"] < g["err"]["int4/b128"]  # a zero point per block fits the range better
    assert rec["symmetric"] and rec["zero_points"]
    assert rec["head"]["int8/b128"] < rec["head"]["int4/b32"]
    c = pick(rec, target=0.5 * min(g["kld"] for g in rec["groups"]) * len(rec["groups"]))
    assert c.node_settings and all(n.startswith("/model/layers.") for n in c.node_settings)


def test_a_bf16_checkpoint_is_measured_as_its_fp32_values(trained_qwen3, tmp_path):
    """The measurement loads a checkpoint in its own dtype and takes one layer at a time to fp32 (half the memory of
    an fp32 model on Qwen's bf16 weights): the numbers are those of the same values stored in fp32 — every matrix's
    KLD and weight errors, the untied table and the head — and the fp32 rerun is still exact."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeqwen.planner.sensitivity import measure

    model = AutoModelForCausalLM.from_pretrained(trained_qwen3, dtype=torch.bfloat16)
    tok = AutoTokenizer.from_pretrained(trained_qwen3)
    recs = []
    for dtype in (torch.bfloat16, torch.float32):
        folder = tmp_path / str(dtype).split(".")[-1]
        model.to(dtype).save_pretrained(folder)
        tok.save_pretrained(folder)
        assert json.loads((folder / "config.json").read_text())["dtype"] == str(dtype).split(".")[-1]
        cfg = {"model": str(folder), "calib_text": str(trained_qwen3.parent.parent / "calib.txt"), "samples": 2,
               "seq_len": 64, "base_bits": 4, "base_block": 128, "symmetric": False,
               "grid": grid_for((4, 128), FORMATS), "nodes_for": NODES, "head_formats": [(8, 128), (4, 32)],
               "table_formats": [(8, 128)], "threads": 1, "resolution": "block"}
        recs.append(measure(cfg))
    bf16, fp32 = recs
    assert [g["kld"] for g in bf16["groups"]] == pytest.approx([g["kld"] for g in fp32["groups"]], rel=1e-6)
    assert [g["err"] for g in bf16["groups"]] == [g["err"] for g in fp32["groups"]]
    assert bf16["head"] == pytest.approx(fp32["head"], rel=1e-6) and bf16["table"] == pytest.approx(fp32["table"], rel=1e-6)
    assert bf16["noise_floor_kld"] < 1e-6 and min(g["kld"] for g in bf16["groups"]) > 0


def test_per_layer_measurement_tracks_the_per_matrix_one(trained_qwen3):
    """0.5B-sized models are measured one layer at a time (the per-matrix reruns would take many minutes), the layer's
    KLD shared among its matrices by their layer-output error; past that (3B-sized) the bounded proxy reruns only a
    few layers spread over the depth and carries the rest by weight error × an interpolated KLD/error ratio. On a
    model small enough to measure every matrix, both rank the matrices like the direct measurement does, and where
    the proxy reruns a layer it measures exactly what the per-layer measurement does."""
    import numpy as np
    from transformers import AutoConfig

    from edgeqwen.planner.budget import PROXY_SHARE, rerun_costs
    from edgeqwen.planner.sensitivity import measure

    def run(resolution, budget=6.0):
        cfg = {"model": str(trained_qwen3), "calib_text": str(trained_qwen3.parent.parent / "calib.txt"), "samples": 2,
               "seq_len": 96, "base_bits": 4, "base_block": 128, "symmetric": False, "grid": grid_for((4, 128), FORMATS),
               "nodes_for": NODES, "head_formats": [(8, 128)], "table_formats": [(8, 128)], "threads": 1,
               "resolution": resolution, "budget_tflop": budget}
        rec = measure(cfg)
        assert rec["resolution"] == resolution and rec["table"]["int8/b128"] > 0  # Qwen3 fixture: untied table
        return rec, np.array([g["kld"] for g in rec["groups"]])

    got, recs = {}, {}
    for resolution in ("matrix", "layer", "proxy"):
        recs[resolution], got[resolution] = run(resolution)
    assert recs["proxy"]["proxy"]["measured_layers"] == [0, 1, 2, 3]  # a budget that pays for every layer
    for resolution in ("layer", "proxy"):
        assert np.corrcoef(np.log(got["matrix"]), np.log(got[resolution]))[0, 1] > 0.85
        top = {r: set(np.argsort(v)[-3:]) for r, v in got.items()}
        assert len(top["matrix"] & top[resolution]) >= 2
        assert np.argmax(got["matrix"].reshape(-1, 5).sum(1)) == np.argmax(got[resolution].reshape(-1, 5).sum(1))
        assert got[resolution].sum() == pytest.approx(got["matrix"].sum(), rel=0.25)  # KLDs roughly add up
    costs = rerun_costs(AutoConfig.from_pretrained(trained_qwen3), 2 * 96)
    budget = (costs[0] + costs[-1]) * 1.01 / PROXY_SHARE  # pays for the first and last layer's reruns, not a third
    ends, _ = run("proxy", budget)
    assert ends["proxy"]["measured_layers"] == [0, 3] and costs[0] + costs[-1] <= budget * PROXY_SHARE
    layer_kld = {g["layer"]: g["unit_kld"] for g in recs["layer"]["groups"]}
    for i in (0, 3):
        assert next(g["unit_kld"] for g in ends["groups"] if g["layer"] == i) == pytest.approx(layer_kld[i], rel=1e-5)


AUTO_RECIPE = """\
version: 1
model: embedded:tiny-qwen2
target: cpu-x86_64
precision: int4
context_length: 512
quantization:
  algorithm: rtn
  symmetric: false
  lm_head: int8
  block_size: 128
  mixed_precision: {{mode: auto, target_kld: {target}}}
accuracy: {{max_ppl_ratio: 1.05, max_kld: {gate}, min_top1: 0.85, max_windows: 3}}
"""


def test_auto_builds_on_a_layer_count_no_fixture_has(tmp_path):
    """A 3-layer Qwen3 with hidden 160 (not a multiple of 128, one KV head, its own vocabulary size): the shipped
    default Qwen recipe plans, measures, builds and runs it; the artifact says what was chosen and why."""
    from edgeqwen.build import BuildOptions, build
    from edgeqwen.runtime import Runner, Sampling
    from edgeqwen.tiny import TinySpec, create_tiny_qwen

    ckpt = create_tiny_qwen(tmp_path / "q3", TinySpec(family="qwen3", vocab_size=1500, hidden_size=160,
                                                      intermediate_size=480, num_hidden_layers=3, num_attention_heads=5,
                                                      num_key_value_heads=1, head_dim=32))
    out = build(BuildOptions("qwen3-0.6b/cpu-x86_64-int4", tmp_path / "art", model=str(ckpt), evaluate=False))
    manifest = json.loads((out / "manifest.json").read_text())
    sens, plan = manifest["sensitivity"], manifest["export"]["plan"]
    assert len(sens["groups"]) == 3 * 5 and {g["layer"] for g in sens["groups"]} == {0, 1, 2}
    assert sens["picture"] == "sensitivity.png" and (out / "sensitivity.png").stat().st_size > 1000
    assert plan["algorithm"] == "gptq" and plan["mixed"]["groups"] == 15 and plan["mixed"]["pending"] is False
    assert all(s["group_size"] == 32 for n, s in plan["node_settings"].items() if "/mlp/down_proj" not in n)  # K=160
    assert any("mixed precision auto:" in d for d in manifest["export"]["decisions"])
    runner = Runner(out)
    assert len(runner.generate(runner.encode("hello"), Sampling(max_new_tokens=4, ignore_eos=True)).token_ids) == 4


def test_a_missed_gate_plans_again_from_the_measured_miss(recipe_dir, tmp_path):
    """An over-optimistic target (0.08) under a 0.03 gate: the first artifact misses, the build scales its predictions
    by the measured miss, plans more bytes, and the second artifact passes — all in one `edgeqwen build`."""
    from edgeqwen.build import BuildOptions, build

    path = recipe_dir / "auto-replan.yaml"
    path.write_text(AUTO_RECIPE.format(target=0.08, gate=0.03))
    out = build(BuildOptions(str(path), tmp_path / "art", evaluate=True))
    manifest = json.loads((out / "manifest.json").read_text())
    decisions = manifest["export"]["decisions"]
    assert any("accuracy gate missed at planned KLD" in d and "planned again" in d for d in decisions)
    assert manifest["accuracy"]["status"] == "pass" and manifest["accuracy"]["kld_mean"] <= 0.03
    assert manifest["export"]["plan"]["mixed"]["kld_scale"] > 1
