"""`edgeqwen build`: every recipe builds, verifies and generates; atomic, reproducible, clear errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import onnx
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.export.fuse import FUSED, GATE_UP
from edgeqwen.checkpoint import inspect_checkpoint
from edgeqwen.errors import EdgeQwenError
from edgeqwen.package import verify_artifact
from edgeqwen.planner import ExportPlan
from edgeqwen.recipe import known_recipes, load_recipe
from edgeqwen.runtime import Runner, Sampling
from edgeqwen.targets import known_targets
from edgeqwen.tiny import TinySpec, create_tiny_qwen

from .helpers.artifacts import REPO, random_checkpoint
from .helpers.genai import genai_generate


def family_fixture(recipe_name: str) -> str:
    model = load_recipe(recipe_name).recipe.model.lower()
    return "random_qwen3" if "qwen3" in model else "random_qwen2_vl" if "-vl-" in model else "random_qwen2"


def op_counts(path):
    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    counts = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return m, counts


def _same_graph_groups() -> dict[str, str]:
    """recipe → the first recipe (in `known_recipes()` order) whose plan gives the same graph on the same fixture.
    Computed at collection, the same in every xdist worker: the tests of one graph form one xdist group, so they run
    on one worker after each other, and that graph is built once per run without the other worker waiting for it."""
    firsts: dict[str, str] = {}
    family = {"random_qwen2": "qwen2", "random_qwen3": "qwen3", "random_qwen2_vl": "qwen2_5_vl"}
    return {name: firsts.setdefault(graph_key(load_recipe(name), random_checkpoint(family[family_fixture(name)])), name)
            for name in known_recipes()}


def graph_key(resolved, ckpt) -> str:
    """Everything that decides an artifact's graph and weights: the plan (less the recipe's name, context and
    decision wording), the artifact format, the checkpoint and any calibration settings."""
    from edgeqwen.checkpoint import inspect_checkpoint
    from edgeqwen.planner import plan
    from edgeqwen.schema import to_dict

    p = plan(resolved, inspect_checkpoint(ckpt)).to_json()
    for k in ("recipe", "context_length", "decisions"):
        p.pop(k)
    q = resolved.recipe.quantization
    return json.dumps([p, resolved.target.artifact_format.value, str(ckpt),
                       to_dict(q.calibration) if q.spec.calibration else None], sort_keys=True)


_FIRST_WITH_GRAPH = _same_graph_groups()


@pytest.mark.parametrize("recipe", [pytest.param(r, marks=pytest.mark.xdist_group(f"graph-{_FIRST_WITH_GRAPH[r]}"))
                                    for r in known_recipes()])
def test_every_recipe_builds_verifies_and_generates(recipe, request, artifacts, tmp_path):
    """Coverage: a recipe file without this test passing is a recipe users cannot trust. Recipes whose plan gives the
    same graph as one already built (e.g. Qwen2.5-1.5B and -3B cpu-x86_64-int4 on the same fixture) check their own
    packaging on that artifact instead of exporting the same graph again."""
    ckpt = request.getfixturevalue(family_fixture(recipe))
    resolved = load_recipe(recipe)
    first = _FIRST_WITH_GRAPH[recipe]
    if first != recipe:
        from edgeqwen.package import finalize_genai_config

        copy = tmp_path / "art"
        shutil.copytree(artifacts.get(first, ckpt), copy)
        cfg = finalize_genai_config(copy, resolved, inspect_checkpoint(ckpt))
        model_max = inspect_checkpoint(ckpt).config["max_position_embeddings"]
        assert cfg["search"]["max_length"] == cfg["model"]["context_length"] == min(resolved.recipe.context_length, model_max)
        assert cfg["search"]["temperature"] == resolved.recipe.generation.temperature
        assert cfg["model"]["eos_token_id"] and None not in cfg["model"]["eos_token_id"]
        return
    path = artifacts.get(recipe, ckpt)
    assert not any(verify_artifact(path).values())
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["recipe"]["precision"] == resolved.recipe.precision.value
    cfg = json.loads((path / "genai_config.json").read_text())
    model_max = inspect_checkpoint(ckpt).config["max_position_embeddings"]
    assert cfg["search"]["max_length"] == min(resolved.recipe.context_length, model_max)
    assert cfg["model"]["eos_token_id"] and None not in cfg["model"]["eos_token_id"]
    assert json.loads((path / "inference_model.json").read_text())["PromptTemplate"]["prompt"].count("{Content}") == 1
    prec = resolved.recipe.precision.value
    if resolved.target.artifact_format.value == "ort":
        ops = (path / "required_operators.config").read_text()
        assert "GroupQueryAttention" in ops and ("MatMulNBits" in ops) == (prec in ("int4", "int8"))
        assert not (path / "model.onnx").exists() and cfg["model"]["decoder"]["filename"] == "model.ort"
    else:
        model, ops = op_counts(path)
        if resolved.target.static_shapes:  # NPU: standard ops, QDQ weights (test_targets checks the details)
            assert "MatMulNBits" not in ops and ops.get("DequantizeLinear") == 4 * 7 + 2
            assert manifest["portable"]["fusion_skipped"] and manifest["portable"]["static_shapes"]
        elif resolved.recipe.exporter.value == "portable":  # standard attention + onnxruntime's fusions
            report = manifest["portable"]
            assert "GroupQueryAttention" not in ops and ops.get("RotaryEmbedding") == 8
            assert ops.get("SkipSimplifiedLayerNormalization") == report["fusions"]["SkipSimplifiedLayerNormalization"] == 8
            assert report["nodes"]["fused"] < report["nodes"]["exported"] and report["ops_exported"]["ReduceMean"] >= 9
            assert report["fused_vs_unfused_max_abs_logit_diff"] < 1e-3
        else:
            assert ops.get("GroupQueryAttention") == 4 and ops.get("SkipSimplifiedLayerNormalization")
        # builder-quantized nodes are named .../MatMul_Q4, pre-quantized (GPTQ) ones .../MatMulNBits
        bits = {re.sub(r"/MatMul(NBits|_Q\d+)$", "/MatMul", n.name): next((a.i for a in n.attribute if a.name == "bits"), 4)
                for n in model.graph.node if n.op_type == "MatMulNBits"}
        head = bits.pop("/lm_head/MatMul", None)
        fused = {n for n in bits if f"/{GATE_UP}/" in n}  # export/fuse.py: one node where gate and up agree
        for name in fused:
            for part in FUSED[GATE_UP]:
                bits[name.replace(GATE_UP, part)] = bits[name]
            del bits[name]
        if resolved.target.static_shapes:
            assert not bits and head is None  # QDQ weights: no MatMulNBits at all (checked above too)
        elif prec == "int4":
            plan = ExportPlan.from_json(manifest["export"]["plan"])
            for name, b in bits.items():  # what the plan says for that node (4-bit unless an override or the
                assert b == plan.node_setting(name).bits, name  # measured mixed-precision plan says otherwise)
            assert 4 in bits.values() and (8 in bits.values()) == any(
                plan.node_setting(n).bits == 8 for n in bits) and len(bits) >= 4 * 5
            for i in range(4):  # gate and up fused exactly where the plan gives them the same settings
                gate, up = (f"/model/layers.{i}/{part}/MatMul" for part in FUSED[GATE_UP])
                same = plan.node_setting(gate) == plan.node_setting(up)
                assert (f"/model/layers.{i}/{GATE_UP}/MatMul" in fused) == same, (i, plan.node_setting(gate))
            assert head == (8 if resolved.recipe.quantization.lm_head.value == "int8" else 4)
            outputs = {o.name for o in model.graph.output}
            assert ("hidden_states" in outputs) == (path / "lm_head.onnx").exists() == plan.prune_head == (
                plan.builder_ep == "cpu" and plan.exporter == "builder")  # the CPU graph layout (webgpu-fp32, web too)
            # the scoring head is a file of its own: model.onnx runs the head once per step, never twice
            assert sum(n.output[0] == "logits" or n.name.startswith("/lm_head/") and n.op_type.startswith("MatMul")
                       for n in model.graph.node) == 1
        elif prec == "int8":
            assert set(bits.values()) == {8} and head == 8
        else:
            assert "MatMulNBits" not in ops
    runner = Runner(path)  # every target's graph also runs on the CPU execution provider here
    ids = runner.encode("The assert statement")
    ours = runner.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True)).token_ids
    if resolved.target.execution_provider.value == "cpu":  # this onnxruntime-genai build has only the CPU provider
        assert ours == genai_generate(path, ids)  # onnxruntime-genai loads every CPU artifact and agrees


def test_every_target_has_recipes():
    used = {load_recipe(r).target.name for r in known_recipes()}
    assert used == set(known_targets())


def test_default_build_cli_verify_and_tamper(tmp_path):
    """The README's main job, through the console script, then verify; a flipped byte is caught."""
    out = tmp_path / "art"
    env = dict(os.environ, EDGEQWEN_QUIET="0")
    proc = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "build", "-o", str(out)], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "[4/5] evaluate" in proc.stderr and "PPL ratio" in proc.stderr
    acc = json.loads((out / "accuracy.json").read_text())
    # the default recipe's own gate, as measured values (a build that missed it would have raised)
    assert acc["kld_mean"] <= 0.02 and acc["ppl_ratio"] <= 1.02 and acc["top1"] >= 0.9, acc
    assert acc["gate"] == {"max_ppl_ratio": 1.02, "max_kld": 0.02, "min_top1": 0.9}
    assert (out / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    ok = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "verify", str(out)], capture_output=True, text=True)
    assert ok.returncode == 0 and "OK" in ok.stdout
    data = out / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    data.write_bytes(bytes(blob))
    bad = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "verify", str(out)], capture_output=True, text=True)
    assert bad.returncode == 1 and "MODIFIED: model.onnx.data" in bad.stdout
    (out / "stray.txt").write_text("x")
    (out / "vocab.json").unlink()
    problems = verify_artifact(out)
    assert problems["extra"] == ["stray.txt"] and problems["missing"] == ["vocab.json"]


@pytest.mark.parametrize("recipe", ["tiny-qwen3/cpu-x86_64-int8", "tiny-qwen3/cpu-x86_64-portable-int4"])
def test_reproducible_build(recipe, random_qwen3, tmp_path):
    """Both exporters; GPTQ's reproducibility (cache off, two executors) is checked in test_matrix."""
    a = build(BuildOptions(recipe, tmp_path / "a", model=str(random_qwen3), evaluate=False))
    b = build(BuildOptions(recipe, tmp_path / "b", model=str(random_qwen3), evaluate=False))
    ma = json.loads((a / "manifest.json").read_text())["files"]
    mb = json.loads((b / "manifest.json").read_text())["files"]
    assert ma == mb  # every file byte-identical (sha256), model.onnx.data included


def test_existing_output_refused_then_forced(random_qwen2, tmp_path):
    out = tmp_path / "o"
    build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", out, model=str(random_qwen2), evaluate=False))
    before = (out / "manifest.json").read_text()
    with pytest.raises(EdgeQwenError, match="already exists"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", out, model=str(random_qwen2), evaluate=False))
    assert (out / "manifest.json").read_text() == before
    build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", out, model=str(random_qwen2), evaluate=False, force=True))
    assert json.loads((out / "manifest.json").read_text())["recipe"]["precision"] == "int4"  # an artifact is replaced


def test_failed_build_leaves_nothing_and_keeps_old_artifact(random_qwen2, tmp_path, monkeypatch):
    out = tmp_path / "o"
    build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", out, model=str(random_qwen2), evaluate=False))
    before = (out / "manifest.json").read_text()
    import edgeqwen.build as b

    def boom(*a, **k):
        raise OSError(28, "No space left on device", str(out))

    monkeypatch.setattr(b, "write_manifest", boom)
    with pytest.raises(EdgeQwenError, match="could not write the artifact: No space left on device"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int8", out, model=str(random_qwen2), evaluate=False, force=True))
    assert (out / "manifest.json").read_text() == before  # the good artifact is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no half-written work folder left


def test_unwritable_output_location(random_qwen2, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(EdgeQwenError, match="cannot write the output's parent folder: Not a directory"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", blocker / "sub" / "art", model=str(random_qwen2), evaluate=False))


def test_missing_model_path(tmp_path):
    with pytest.raises(EdgeQwenError, match="model path does not exist"):
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", tmp_path / "o", model=str(tmp_path / "nope"), evaluate=False))


def test_non_qwen_architecture_is_refused(random_qwen2, tmp_path):
    import shutil

    other = tmp_path / "llama"
    shutil.copytree(random_qwen2, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["architectures"], cfg["model_type"] = ["LlamaForCausalLM"], "llama"
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(EdgeQwenError) as info:
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", tmp_path / "o", model=str(other), evaluate=False))
    assert "unsupported architecture ['LlamaForCausalLM']" in str(info.value)
    assert "Qwen2ForCausalLM, Qwen2_5_VLForConditionalGeneration, Qwen3ForCausalLM" in str(info.value)
    assert not (tmp_path / "o").exists()


def test_hub_id_offline_says_how_to_use_a_local_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(EdgeQwenError) as info:
        build(BuildOptions("qwen2.5-0.5b-instruct/cpu-x86_64-int4", tmp_path / "o", evaluate=False))
    msg = str(info.value)
    assert "'Qwen/Qwen2.5-0.5B-Instruct'" in msg and "hub is unreachable" in msg and "--model PATH" in msg


@pytest.mark.parametrize("family, hidden, heads, kv, inter, head_dim",
                         [("qwen2", 96, 3, 1, 200, None), ("qwen3", 100, 4, 2, 250, 16)])
def test_odd_shapes_build_run_and_record_fallbacks(family, hidden, heads, kv, inter, head_dim, tmp_path):
    spec = TinySpec(family=family, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=kv,
                    intermediate_size=inter, num_hidden_layers=3, head_dim=head_dim)  # layer 1 stays int4
    ckpt = create_tiny_qwen(tmp_path / "odd", spec)
    out = build(BuildOptions(f"tiny-{family}/cpu-x86_64-int4", tmp_path / "o", model=str(ckpt), evaluate=False))
    decisions = json.loads((out / "manifest.json").read_text())["export"]["decisions"]
    assert any("pads the last block" in d for d in decisions)
    _, ops = op_counts(out)
    if hidden == 96:  # a whole number of 32-blocks: the tied table is shared and quantized
        assert ops.get("GatherBlockQuantized") == 1
        # down_proj has K=200 = 7 blocks: onnxruntime cannot pack asymmetric 4-bit zero points for an odd count
        assert any("down_proj/MatMul: K=200 is 7 blocks of 32 (odd) -> symmetric" in d for d in decisions)
    else:  # 100 is not a multiple of any block size: embeddings stay float, and the manifest says so
        assert any("embeddings kept in float" in d for d in decisions) and "GatherBlockQuantized" not in ops
    runner = Runner(out)
    ids = runner.encode("odd shapes")
    assert runner.generate(ids, Sampling(max_new_tokens=4, ignore_eos=True)).token_ids == genai_generate(out, ids, 4)


def test_head_dim_the_kernel_cannot_run_fails_before_export(tmp_path):
    ckpt = create_tiny_qwen(tmp_path / "odd", TinySpec(family="qwen2", hidden_size=100, num_attention_heads=5,
                                                        num_key_value_heads=1, intermediate_size=128, num_hidden_layers=2))
    with pytest.raises(EdgeQwenError) as info:
        build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", tmp_path / "o", model=str(ckpt), evaluate=False))
    msg = str(info.value)
    assert "head_dim 20" in msg and "multiple of 8" in msg and "self_attn" in msg
    assert not (tmp_path / "o").exists()


def test_recipes_cli_lists_and_shows():
    out = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "recipes"], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0 and "qwen3-4b/cpu-arm64-int4" in out.stdout
    show = subprocess.run([sys.executable, "-m", "edgeqwen.cli", "recipes", "show", "qwen3-0.6b/cpu-x86_64-int4"],
                          capture_output=True, text=True)
    assert show.returncode == 0 and "Qwen/Qwen3-0.6B" in show.stdout and "block_size: 32" in show.stdout


def test_mixed_precision_overrides_by_node_glob(random_qwen3, tmp_path):
    recipe = tmp_path / "mixed.yaml"
    recipe.write_text(
        "version: 1\nmodel: embedded:tiny-qwen3\ntarget: cpu-x86_64\nprecision: int4\ncontext_length: 256\n"
        "quantization:\n  block_size: 32\n  overrides:\n"
        "    '/model/layers.0/*': {bits: 8}\n    '*/mlp/down_proj/MatMul': {block_size: 16, symmetric: false}\n")
    out = build(BuildOptions(str(recipe), tmp_path / "o", model=str(random_qwen3), evaluate=False))
    model, _ = op_counts(out)
    attrs = {n.name: {a.name: a.i for a in n.attribute} for n in model.graph.node if n.op_type == "MatMulNBits"}
    layer0 = [v for k, v in attrs.items() if k.startswith("/model/layers.0/")]
    assert layer0 and all(v["bits"] == 8 for v in layer0)
    assert all(v.get("bits", 4) == 4 for k, v in attrs.items() if k.startswith("/model/layers.1/"))
    assert attrs["/model/layers.2/mlp/down_proj/MatMul_Q4"]["block_size"] == 16
    decisions = json.loads((out / "manifest.json").read_text())["export"]["decisions"]
    assert "override '/model/layers.0/*' -> {'bits': 8} on 5 node(s)" in decisions
    bad = tmp_path / "bad.yaml"
    bad.write_text(recipe.read_text().replace("{bits: 8}", "{bits: 3}"))
    with pytest.raises(EdgeQwenError, match="override bits 3 must be 4 or 8"):
        load_recipe(str(bad))


def test_low_memory_export_matches_the_normal_path(trained_qwen2, artifacts, tmp_path):
    normal = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2, evaluate=True)
    low = build(BuildOptions("tiny-qwen2/cpu-x86_64-int4", tmp_path / "low", model=str(trained_qwen2), low_memory=True))
    a = json.loads((normal / "accuracy.json").read_text())
    b = json.loads((low / "accuracy.json").read_text())
    assert abs(b["kld_mean"] - a["kld_mean"]) < 0.2 * a["kld_mean"]
    manifest = json.loads((low / "manifest.json").read_text())
    assert any("low-memory export" in d for d in manifest["export"]["decisions"])
    _, ops = op_counts(low)
    assert ops.get("GatherBlockQuantized") == 1 and "MatMul" not in ops  # tied table shared, every MatMul quantized
    runner = Runner(low)
    ids = runner.encode("The assert statement")
    assert runner.generate(ids, Sampling(max_new_tokens=8, ignore_eos=True)).token_ids == genai_generate(low, ids)


def test_low_memory_export_of_a_bf16_checkpoint(tmp_path):
    ckpt = create_tiny_qwen(tmp_path / "bf16", TinySpec(family="qwen3", num_hidden_layers=2, head_dim=32), dtype="bfloat16")
    assert json.loads((ckpt / "config.json").read_text()).get("dtype") == "bfloat16"
    out = build(BuildOptions("tiny-qwen3/cpu-x86_64-int8", tmp_path / "o", model=str(ckpt), evaluate=False, low_memory=True))
    runner = Runner(out)
    ids = runner.encode("bf16 weights")
    assert runner.generate(ids, Sampling(max_new_tokens=6, ignore_eos=True)).token_ids == genai_generate(out, ids, 6)
