"""The planner's decisions, table-tested from configs alone (no weights, no build: milliseconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgeqwen.architectures import HEAD_NODE, architectures, get_architecture
from edgeqwen.checkpoint import Checkpoint
from edgeqwen.errors import EdgeQwenError
from edgeqwen.memory import estimate
from edgeqwen.planner import ExportPlan, MixedPlan, TableMode, plan
from edgeqwen.quantize.request import NodeSetting, Scheme
from edgeqwen.recipe import known_recipes, load_recipe
from edgeqwen.schema import to_dict

from .helpers.planning import codes, config
from .helpers.sensitivity import record

REPO = Path(__file__).resolve().parents[1]


def recipe(tmp_path, quant="", precision="int4", target="cpu-x86_64", exporter="builder", model="embedded:tiny-qwen2",
           block=32):
    p = tmp_path / "r.yaml"
    p.write_text(f"version: 1\nmodel: {model}\ntarget: {target}\nprecision: {precision}\nexporter: {exporter}\n"
                 f"context_length: 1024\nquantization:\n  block_size: {block}\n{quant}")
    return load_recipe(str(p))


def test_default_int4_recipe_plans_intent_on_any_layer_count():
    for layers in (3, 4, 6, 28):
        p = plan(load_recipe("tiny-qwen2/cpu-x86_64-int4"), config(layers=layers))
        assert p.algorithm == "gptq" and p.matmul_bits == 4 and not p.symmetric
        int8 = sorted({n.split("/")[2] for n, s in p.node_settings.items() if s.bits == 8})
        assert int8 == ["layers.0", f"layers.{layers - 1}"], (layers, int8)
        assert p.head.bits == 8 and p.head.block_size == 128
        assert p.table.mode == TableMode.SHARED and p.table.bits == 8 and p.table.block_size == 128
        assert p.node_setting(HEAD_NODE) == NodeSetting(8, 128, Scheme.ASYM)
        assert p.builder_options()["int4_algo_config"] == "rtn_last" and p.builder_options()["shared_embeddings"]


def test_override_that_matches_nothing_names_the_glob_and_layers(tmp_path):
    r = recipe(tmp_path, "  overrides: {'/model/layers.7/*': {bits: 8}}\n")
    with pytest.raises(EdgeQwenError) as info:
        plan(r, config(layers=3))
    msg = str(info.value)
    assert "'/model/layers.7/*' matches no node" in msg and "3 decoder layers" in msg and "layers.2" in msg
    assert "{last}" in info.value.hint
    with pytest.raises(EdgeQwenError, match=r"\{last\+1\} is layer 3, outside"):
        plan(recipe(tmp_path, "  overrides: {'/model/layers.{last+1}/*': {bits: 8}}\n"), config(layers=3))
    p = plan(recipe(tmp_path, "  overrides: {'/model/layers.{last-1}/mlp/*': {bits: 8}}\n"), config(layers=5))
    assert sorted(p.node_settings) == [f"/model/layers.3/mlp/{m}/MatMul" for m in ("down_proj", "gate_proj", "up_proj")]


@pytest.mark.parametrize("algorithm, low_memory, want_algo, head_bits, symmetric, decision", [
    ("rtn", False, "rtn", 4, True, None),
    ("k_quant", False, "k_quant", 8, False, "head.algorithm"),
    ("k_quant", True, "rtn", 4, True, "algorithm.fallback"),  # the low-memory path runs rtn: the plan says so
    ("hqq", False, "hqq", 4, False, "algorithm.hqq"),
    ("hqq", True, "rtn", 4, True, "algorithm.fallback"),
    ("gptq", False, "gptq", 4, True, None),  # zero points written for the builder, dropped after (zero_points.py)
    ("autoround", False, "autoround", 4, False, "symmetric.off"),
    ("rtn_clip", True, "rtn_clip", 4, True, "low_memory"),
])
def test_algorithm_rules_come_from_the_registry(tmp_path, algorithm, low_memory, want_algo, head_bits, symmetric, decision):
    p = plan(recipe(tmp_path, f"  algorithm: {algorithm}\n  symmetric: true\n"), config(), low_memory=low_memory)
    assert (p.algorithm, p.head.bits, p.symmetric) == (want_algo, head_bits, symmetric)
    if decision:
        assert decision in codes(p), codes(p)
    assert ExportPlan.from_json(p.to_json()) == p  # what the worker receives is the same plan


def test_shapes_that_need_fallbacks(tmp_path):
    odd = plan(load_recipe("tiny-qwen2/cpu-x86_64-int4"), config(hidden=96, heads=3, kv=1, inter=200, layers=3))
    assert odd.algorithm == "rtn" and "algorithm.fallback" in codes(odd)  # GPTQ needs whole groups: K=200
    assert odd.node_settings["/model/layers.1/mlp/down_proj/MatMul"] == NodeSetting(scheme=Scheme.SYM)  # 4-bit, 7 blocks
    assert odd.node_settings["/model/layers.0/mlp/down_proj/MatMul"].scheme is None  # int8 there: no packing issue
    assert any("K=200 is 7 blocks of 32 (odd) -> symmetric" in d.message for d in odd.decisions)
    flt = plan(load_recipe("tiny-qwen3/cpu-x86_64-int4"), config("qwen3", hidden=100, heads=4, kv=2, inter=250,
                                                                   head_dim=16, layers=2))
    assert flt.table.mode == TableMode.FLOAT and "table.float_shape" in codes(flt)
    fit = plan(recipe(tmp_path, "  embeddings: quantized\n"), config(hidden=80, heads=2, kv=1, inter=160))
    assert fit.block_size == 32 and fit.table.block_size == fit.head.block_size == 16  # only the table needs K whole
    assert "block.table_fit" in codes(fit) and "head.table_fit" in codes(fit)
    # GPTQ needs whole groups: an uneven K takes the largest block that divides it on those nodes alone
    unseen = plan(recipe(tmp_path, "  algorithm: gptq\n  lm_head: int8\n", block=128),
                  config("qwen3", hidden=160, heads=5, kv=1, head_dim=32, inter=512, layers=3, vocab=3000))
    assert unseen.algorithm == "gptq" and unseen.block_size == 128 and "block.fit_k" in codes(unseen)
    assert unseen.node_setting("/model/layers.2/attn/qkv_proj/MatMul").group_size == 32  # K=160
    assert unseen.node_setting("/model/layers.2/mlp/down_proj/MatMul").group_size == 128  # K=512


@pytest.mark.parametrize("quant, precision, target, exporter, match", [
    ("  algorithm: autoround\n  overrides: {'/model/layers.0/*': {bits: 8}}\n", "int4", "cpu-x86_64", "builder",
     "autoround does not take per-layer overrides"),
    ("  algorithm: gptq\n", "int4", "cpu-x86_64", "portable", "portable exporter quantizes with rtn, rtn_clip only"),
    ("", "int8", "qnn-npu", "builder", "needs static shapes / QDQ weights"),
    ("  embeddings: int8\n  lm_head: float\n", "int4", "cpu-x86_64", "builder", "cannot share the tied table"),
])
def test_refused_before_any_work(tmp_path, quant, precision, target, exporter, match):
    with pytest.raises(EdgeQwenError, match=match):
        plan(recipe(tmp_path, quant, precision, target, exporter), config())


def test_head_dim_and_architecture_checks(tmp_path):
    with pytest.raises(EdgeQwenError, match="head_dim 20 .* not a multiple of 8"):
        plan(recipe(tmp_path), config(hidden=100, heads=5, kv=1))
    ckpt = config()
    bad = Checkpoint(path=ckpt.path, source="x", architecture="LlamaForCausalLM", family="llama", config=ckpt.config)
    with pytest.raises(EdgeQwenError, match="known: Qwen2ForCausalLM, Qwen2_5_VLForConditionalGeneration, Qwen3ForCausalLM"):
        plan(recipe(tmp_path), bad)


def test_int8_and_float_plans(tmp_path):
    i8 = plan(load_recipe("tiny-qwen3/cpu-x86_64-int8"), config("qwen3", head_dim=32))
    assert i8.matmul_bits == 8 and i8.head.bits == 8 and i8.builder_precision == "int4" and i8.precision == "int8"
    assert i8.table.mode == TableMode.SEPARATE and i8.table.bits == 8
    f32 = plan(load_recipe("tiny-qwen2/cpu-x86_64-fp32"), config())
    assert not f32.quantized and f32.algorithm == "none" and f32.builder_options() == {"hf_token": "false", "hf_remote": False}


def test_memory_estimate_reads_the_plan(tmp_path):
    """The estimate counts what the plan writes: k_quant's int8 head, HQQ's float zero points, int8 overrides,
    the KV cache at the recipe's context."""
    cfg = config(hidden=896, layers=24, heads=14, kv=2, inter=4864, vocab=151936)

    def weights(quant, low_memory=False):
        r = recipe(tmp_path, quant)
        return estimate(plan(r, cfg, low_memory), r, cfg.config).weights_mb

    rtn = weights("  algorithm: rtn\n  symmetric: false\n")
    assert weights("  algorithm: k_quant\n") > rtn  # lm_head int8 (151936 x 896)
    assert weights("  algorithm: hqq\n") > rtn  # float zero points
    assert weights("  algorithm: k_quant\n", low_memory=True) < weights("  algorithm: k_quant\n")  # rtn there
    assert weights("  algorithm: rtn\n  symmetric: false\n  overrides: {'/model/layers.{first}/*': {bits: 8}}\n") > rtn
    kv = []
    for context in (512, 1024):
        p = tmp_path / f"c{context}.yaml"
        p.write_text(f"version: 1\nmodel: x\ntarget: cpu-x86_64\nprecision: int4\ncontext_length: {context}\n")
        r = load_recipe(str(p))
        kv.append(estimate(plan(r, cfg), r, cfg.config).kv_cache_mb)
    assert kv[1] == pytest.approx(2 * kv[0]) and kv[0] == pytest.approx(2 * 24 * 2 * 64 * 512 * 4 / 2**20)


def test_every_registered_architecture_has_a_node_map_for_every_exporter():
    for arch in architectures():
        for exporter in ("builder", "portable"):
            nodes = arch.matmul_nodes(exporter, 2)
            assert nodes[-1] == HEAD_NODE and len(set(nodes)) == len(nodes)
            shapes = arch.linear_shapes(config(arch.family).config, exporter)
            assert set(shapes) == set(arch.matmul_nodes(exporter, 4))
    assert get_architecture("Qwen2ForCausalLM").module_for_node("builder", "attn/qkv_proj") == [
        "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"]


def _family_of(resolved) -> str:
    model = resolved.recipe.model.lower()
    return "qwen3" if "qwen3" in model else "qwen2_5_vl" if "-vl-" in model else "qwen2"


def test_every_recipe_plan_round_trips_typed_through_json():
    """What a worker receives (JSON) restores to the same frozen, typed plan: enums stay enums, node settings, the
    mixed-precision summary and the vision part stay dataclasses. An auto plan made from a measurement included."""
    import enum
    import json

    plans = []
    for name in known_recipes():
        resolved = load_recipe(name)
        ckpt = config(_family_of(resolved), head_dim=32 if _family_of(resolved) == "qwen3" else None)
        plans.append(plan(resolved, ckpt))
    measured = plan(load_recipe("qwen2.5-0.5b-instruct/cpu-x86_64-int4"), config(),
                    sensitivity={**record(4, kld=lambda layer, kind: 0.02 if layer == 0 else 0.001), "head": {},
                                 "table": {}, "cache_key": "k"})
    assert measured.mixed.groups == 20 and not measured.mixed.pending and measured.mixed.choice
    assert measured.node_settings and all(isinstance(s, NodeSetting) for s in measured.node_settings.values())
    for p in plans + [measured]:
        back = ExportPlan.from_json(json.loads(json.dumps(p.to_json())))
        assert back == p, p.recipe
        assert isinstance(back.exporter, enum.Enum) and isinstance(back.precision, enum.Enum)
        assert isinstance(back.table.mode, TableMode) and isinstance(back.mixed, MixedPlan)
        assert all(isinstance(s.scheme, (Scheme, type(None))) for s in back.node_settings.values())
        assert to_dict(back) == p.to_json()
    vl = [p for p in plans if p.vision is not None]
    assert vl and all(p.table.mode == TableMode.ROWS for p in vl if p.quantized)


def test_a_context_past_the_model_is_clamped_and_says_so(tmp_path):
    p = tmp_path / "long.yaml"
    for precision in ("int4", "fp32"):
        p.write_text(f"version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: {precision}\n"
                     "context_length: 100000\n")
        made = plan(load_recipe(str(p)), config())
        assert made.context_length == 2048 and "context.clamp" in codes(made)
        assert any("context_length 100000 -> 2048" in d.message for d in made.decisions)
    assert "context.clamp" not in codes(plan(recipe(tmp_path), config()))  # 1024 fits: nothing to say



def test_plan_estimates_the_build_time_and_bounds_gptq_work():
    """Each stage's time on this machine, from the plan alone. On the Qwen2.5-3B shape GPTQ's calibration is cut to
    the sequences its per-token work budget pays for (a recorded decision, the same on every machine); the 0.5B shape
    keeps the recipe's 32. The larger model's estimate is larger in every stage; past 15 minutes the build names its
    faster choices."""
    from edgeqwen.planner.cost import estimate as estimate_time, long_build_advice

    shapes = {"3b": config(hidden=2048, inter=11008, layers=36, heads=16, kv=2, vocab=151936, tied=True),
              "0.5b": config(hidden=896, inter=4864, layers=24, heads=14, kv=2, vocab=151936, tied=True)}
    plans = {n: plan(load_recipe(f"qwen2.5-{n}-instruct/cpu-x86_64-int4"), c) for n, c in shapes.items()}
    assert plans["0.5b"].calibration_samples == 32 and "gptq.tokens" not in codes(plans["0.5b"])
    assert plans["3b"].calibration_samples == 17 and "gptq.tokens" in codes(plans["3b"])
    est = {n: estimate_time(p, load_recipe(p.recipe), shapes[n].config, gflops=200.0) for n, p in plans.items()}
    stages = ["sensitivity", "gptq", "export", "evaluate"]
    assert list(est["0.5b"].seconds) == list(est["3b"].seconds) == stages
    assert all(est["3b"].seconds[s] > est["0.5b"].seconds[s] > 0 for s in stages)
    half_speed = estimate_time(plans["3b"], load_recipe(plans["3b"].recipe), shapes["3b"].config, gflops=100.0)
    assert half_speed.total_s == pytest.approx(2 * est["3b"].total_s)  # time is work over this machine's rate
    assert long_build_advice(est["0.5b"]) is None and "fast variant" in long_build_advice(
        estimate_time(plans["3b"], load_recipe(plans["3b"].recipe), shapes["3b"].config, gflops=20.0))


@pytest.mark.parametrize("shape,dims", [
    ("qwen2.5-0.5b", dict(hidden=896, inter=4864, layers=24, heads=14, kv=2)),
    ("qwen2.5-1.5b", dict(hidden=1536, inter=8960, layers=28, heads=12, kv=2)),
    ("qwen2.5-3b-bf16", dict(hidden=2048, inter=11008, layers=36, heads=16, kv=2))])
def test_time_estimate_predicts_the_recorded_quiet_builds(shape, dims):
    """The plan's estimate at the probe rate the recorded build measured, against that build's measured stages
    (benchmarks/results/build-*.json, quiet): the total within 30 %, each stage within a factor of 1.5."""
    from edgeqwen.planner.cost import estimate as estimate_time

    results = REPO / "benchmarks" / "results"
    model = {"qwen2.5-0.5b": "qwen2.5-0.5b-instruct", "qwen2.5-1.5b": "qwen2.5-1.5b-instruct",
             "qwen2.5-3b-bf16": "qwen2.5-3b-instruct"}[shape]
    row = next(r for r in json.loads((results / f"build-{shape}.json").read_text())
               if r["name"] == f"edgeqwen {model}/cpu-x86_64-int4")
    probe = json.loads((results / f"manifest-{model}-cpu-x86_64-int4.json").read_text())["build_time"]["estimate"]
    cfg = config(vocab=151936, tied=True, **dims)
    p = plan(load_recipe(f"{model}/cpu-x86_64-int4"), cfg)
    est = estimate_time(p, load_recipe(p.recipe), cfg.config, gflops=probe["probe_gflops"])
    assert 0.7 <= est.total_s / sum(row["stages"].values()) <= 1.3, (est.seconds, row["stages"])
    for stage, measured in row["stages"].items():
        assert 1 / 1.5 <= est.seconds[stage] / measured <= 1.5, (stage, est.seconds[stage], measured)


def test_time_estimate_of_the_embedded_default_build_counts_its_fixed_costs():
    """The tiny default build's stages are mostly start-up (imports, the torch model, the session), not arithmetic:
    measured on a machine probing 70-73 GFLOP/s, GPTQ 15-18 s (calibration included), export 4-9 s, evaluation
    2.7 s quiet to 10 s busy (the estimate said 1 s, 45 s and 0 s before it counted them). Each stage within 2x."""
    from edgeqwen.checkpoint import embedded_dir, inspect_checkpoint
    from edgeqwen.planner.cost import estimate as estimate_time

    resolved = load_recipe("tiny-qwen2/cpu-x86_64-int4")
    ckpt = inspect_checkpoint(embedded_dir() / "tiny-qwen2")
    est = estimate_time(plan(resolved, ckpt), resolved, ckpt.config, gflops=71.0).seconds
    for stage, (low, high) in {"gptq": (15, 18), "export": (4, 9), "evaluate": (2.7, 10)}.items():
        assert low / 2 <= est[stage] <= 2 * high, (stage, est)
