"""Quantization algorithms (GPTQ, AutoRound, HQQ), calibration files, olive-config, int8 tables."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.errors import EdgeQwenError
from edgeqwen.evaluate.core import EvalConfig, evaluate
from edgeqwen.recipe import load_recipe
from edgeqwen.tiny import corpus_text

from .helpers.artifacts import BASE_RECIPE, algo_recipe

GPTQ_RECIPE = BASE_RECIPE  # layout shared with the algorithm tests (asym, block 32, int8 head)


def recipe(tmp_path, name, **kw):
    p = tmp_path / f"{name}.yaml"
    p.write_text(GPTQ_RECIPE.format(**{"model": "tiny-qwen2", "precision": "int4", "algo": "gptq", **kw}))
    return str(p)


def model_bytes(path):
    return sum((path / f).stat().st_size for f in ("model.onnx", "model.onnx.data"))


def test_gptq_and_hqq_beat_rtn(trained_qwen2, recipe_dir, artifacts):
    """GPTQ and onnxruntime's HQQ on the trained tiny Qwen2 vs round-to-nearest with the same layout
    (asym, b32, int8 head). GPTQ at equal size; HQQ stores float zero points, so it is larger."""
    rtn, gptq, hqq = (artifacts.get(algo_recipe(recipe_dir, a), trained_qwen2, evaluate=True) for a in ("rtn", "gptq", "hqq"))
    assert abs(model_bytes(gptq) / model_bytes(rtn) - 1) < 0.01
    kld = {a: json.loads((p / "accuracy.json").read_text())["kld_mean"] for a, p in zip(("rtn", "gptq", "hqq"), (rtn, gptq, hqq))}
    assert kld["gptq"] < 0.8 * kld["rtn"], kld  # measured: 0.046 vs 0.062 (16 x 128 calibration tokens)
    assert kld["hqq"] < 0.95 * kld["rtn"], kld  # measured: 0.056
    model = onnx.load(str(hqq / "model.onnx"), load_external_data=False)
    inits = {i.name: i for i in model.graph.initializer}
    layer = [n for n in model.graph.node if n.op_type == "MatMulNBits" and n.name.startswith("/model/layers.")]
    assert len(layer) == 4 * 4 and all({a.name: a.i for a in n.attribute}["accuracy_level"] == 4 for n in layer)
    assert sum("/mlp/gate_up_proj/" in n.name for n in layer) == 4  # export/fuse.py (float zero points too)
    assert all(inits[n.input[3]].data_type == onnx.TensorProto.FLOAT for n in layer)  # HQQ's float zero points
    head = next(n for n in model.graph.node if n.name.startswith("/lm_head/MatMul"))
    assert {a.name: a.i for a in head.attribute}["bits"] == 8  # the shared int8 table, written by the RTN path
    manifest = json.loads((gptq / "manifest.json").read_text())
    assert manifest["gptq"]["source"].endswith("calib.txt") and manifest["gptq"]["samples"] == 16
    assert any(d.startswith("gptq (edgeqwen, layer-streamed") for d in manifest["export"]["decisions"])
    assert manifest["gptq"]["implementation"] == "edgeqwen gptq_stream" and len(manifest["gptq"]["output_rel_err"]) == 4


def _olive_gptq(w, h, symmetric: bool):
    import types

    import torch
    from olive.passes.pytorch.gptq import Gptq

    info = types.SimpleNamespace(data={"H": h.clone(), "N": 512}, scales=None, zero_points=None,
                                 quantizer=types.SimpleNamespace(bits=4, symmetric=symmetric, group_size=32))
    olive = types.SimpleNamespace(weight=torch.nn.Parameter(w.clone()), quant_info=info)
    Gptq.process_module(olive, percdamp=0.01, actorder=False)
    return olive.weight.data, info


def test_gptq_matches_olives_pass_per_matrix():
    """edgeqwen's GPTQ arithmetic (one Cholesky and a blocked triangular inverse, the column loop on W transposed)
    gives what Olive's Gptq pass gives on the same weights and Hessian — weights, scales, zero points — and packs
    its levels as Olive does."""
    import torch
    from olive.common.quant.utils import pack_to_uint8

    from edgeqwen.quantize.gptq_math import GroupFormat, gptq, pack_uint8

    torch.manual_seed(0)
    w, x = torch.randn(96, 256), torch.randn(512, 256) * torch.rand(256) * 3
    h = 2 / 512 * x.T @ x
    ours = gptq(w, h, GroupFormat(4, 32, False))
    weight, info = _olive_gptq(w, h, symmetric=False)
    assert torch.allclose(ours.dequantize(32), weight, atol=1e-5)
    assert torch.allclose(ours.scales, info.scales, rtol=1e-5) and torch.equal(ours.zeros, info.zero_points.to(torch.int32))
    assert torch.equal(pack_uint8(ours.q, 4), pack_to_uint8(ours.q.to(torch.int32), 4))


def test_symmetric_gptq_uses_every_level():
    """Symmetric GPTQ takes onnxruntime's block scale (the block's largest-magnitude weight / -8, signed; zero point
    8): that weight lands exactly on level 0 and the rest of the block spreads over all 16 levels, where Olive's
    symmetric scale (2·max|w| / 15) leaves half a level unused at each end — a smaller GPTQ loss on the same
    weights. MatMulNBits computes (level - 8) · scale either way, so its output is what `dequantize` says."""
    import torch

    from edgeqwen.quantize.fake_quant import block_fake_quant
    from edgeqwen.quantize.gptq_math import GroupFormat, gptq

    torch.manual_seed(0)
    w, x = torch.randn(96, 256), torch.randn(512, 256) * torch.rand(256) * 3
    h = 2 / 512 * x.T @ x
    ours = gptq(w, h, GroupFormat(4, 32, True))
    weight, _ = _olive_gptq(w, h, symmetric=True)
    assert torch.equal(ours.zeros, torch.full_like(ours.zeros, 8)) and int(ours.q.min()) == 0 and int(ours.q.max()) <= 15

    def loss(wq):  # GPTQ's objective: the layer output's squared error on these inputs
        d = wq - w
        return float(torch.einsum("nk,kj,nj->", d, h, d))
    assert loss(ours.dequantize(32)) < 0.9 * loss(weight), (loss(ours.dequantize(32)), loss(weight))  # measured 0.84x
    # with no Hessian to work with (identity), GPTQ is round-to-nearest: exactly onnxruntime's symmetric RTN
    rtn = gptq(w, torch.eye(256), GroupFormat(4, 32, True), damp_percent=0.0)
    assert torch.allclose(rtn.dequantize(32), block_fake_quant(w, 4, 32, True), atol=1e-6)


def test_gptq_building_blocks_are_exact():
    """The lower-triangle Gram accumulation over several batches equals XᵀX; the blocked triangular inverse is one."""
    import torch

    from edgeqwen.quantize.gptq_math import GramAccumulator, lower_inverse

    torch.manual_seed(0)
    x = torch.randn(300, 1100)
    gram = GramAccumulator(1100, block=256)
    for part in x.split(100):
        gram.add(part)
    assert torch.allclose(gram.value(), x.T @ x, rtol=1e-4, atol=1e-3)
    lower = torch.tril(torch.randn(700, 700)) + 30 * torch.eye(700)
    assert torch.allclose(lower_inverse(lower, block=256) @ lower, torch.eye(700), atol=1e-5)


@pytest.mark.slow
def test_autoround_beats_rtn_and_is_cached(trained_qwen2, recipe_dir, artifacts, tmp_path):
    """AutoRound (auto-round, saved in the GPTQ layout the builder imports) vs RTN at equal size; a second
    build with the same settings reuses the cached result."""
    rtn = artifacts.get(algo_recipe(recipe_dir, "rtn"), trained_qwen2, evaluate=True)
    ar = artifacts.get(algo_recipe(recipe_dir, "autoround"), trained_qwen2, evaluate=True)
    assert abs(model_bytes(ar) / model_bytes(rtn) - 1) < 0.01
    kld = {p: json.loads((p / "accuracy.json").read_text())["kld_mean"] for p in (rtn, ar)}
    assert kld[ar] < 0.85 * kld[rtn], kld  # measured: 0.051 vs 0.062 at 20 iterations x 16 samples (200 x 128: 0.036)
    info = json.loads((ar / "manifest.json").read_text())["autoround"]
    assert info["iters"] == 20 and info["wall_s"] >= 0
    again = build(BuildOptions(algo_recipe(recipe_dir, "autoround"), tmp_path / "ar2", evaluate=False))
    assert json.loads((again / "manifest.json").read_text())["autoround"]["wall_s"] == 0.0
    assert (again / "model.onnx.data").read_bytes() == (ar / "model.onnx.data").read_bytes()
    text = Path(algo_recipe(recipe_dir, "autoround")).read_text()
    with pytest.raises(EdgeQwenError, match="autoround does not take per-layer overrides"):
        (tmp_path / "ov.yaml").write_text(text.replace("  block_size: 32\n", "  block_size: 32\n  overrides: "
                                                       "{'/model/layers.0/*': {bits: 8}}\n"))
        build(BuildOptions(str(tmp_path / "ov.yaml"), tmp_path / "ov"))
    assert not (tmp_path / "ov").exists()


def test_gptq_result_is_cached_per_weights_calibration_and_settings(random_qwen2, artifacts, tmp_path):
    """Other targets and tune candidates with the same quantization reuse one GPTQ run (the run's cache is shared, so
    whichever of the two targets built first ran GPTQ — or an earlier build did — and the other reused it); any change
    re-runs it."""
    a, b = (artifacts.get(r, random_qwen2) for r in ("tiny-qwen2/cpu-x86_64-int4", "tiny-qwen2/cpu-arm64-int4"))
    ga, gb = (json.loads((p / "manifest.json").read_text())["gptq"] for p in (a, b))
    assert ga["cache_key"] == gb["cache_key"] and min(ga["wall_s"], gb["wall_s"]) == 0.0
    assert (a / "model.onnx.data").read_bytes() == (b / "model.onnx.data").read_bytes()
    from edgeqwen.quantize.gptq_stream import gptq_cache_key, gptq_settings
    from edgeqwen.quantize.request import NodeSetting, QuantRequest

    calib = tmp_path / "c.txt"
    calib.write_text("x")
    req = QuantRequest("Qwen2ForCausalLM", 4, 32, False)
    def key(req=req, samples=128, damp=0.01, text=calib):
        return gptq_cache_key(random_qwen2, text, gptq_settings(req, samples, 256, damp))
    up8 = QuantRequest("Qwen2ForCausalLM", 4, 32, False, node_settings={"/model/layers.0/mlp/up_proj/MatMul": NodeSetting(8)})
    assert len({key(), key(QuantRequest("Qwen2ForCausalLM", 4, 64, False)), key(damp=0.1), key(samples=64), key(up8)}) == 5
    moved = tmp_path / "elsewhere" / "c.txt"
    moved.parent.mkdir()
    moved.write_text("x")
    assert key() == key(text=moved)  # paths do not matter, content does


def test_custom_calibration_file_is_used(random_qwen2, tmp_path):
    calib = tmp_path / "my-calib.txt"
    calib.write_text(corpus_text("train")[:20_000])
    out = build(BuildOptions(recipe(tmp_path, "g"), tmp_path / "out", model=str(random_qwen2), evaluate=False, calib=calib))
    info = json.loads((out / "manifest.json").read_text())["gptq"]
    assert info["source"] == str(calib) and info["tokens"] < 20_000 and info["samples"] >= 8


@pytest.mark.parametrize("content, match", [
    (None, "calibration file not found"),
    ("", "calibration file is empty"),
    ("only a few words of text, far too short to calibrate anything", "calibration text is too short"),
    (b"\xff\xfe\x00binary", "not UTF-8"),
])
def test_bad_calibration_file_fails_before_export(random_qwen2, tmp_path, content, match):
    calib = tmp_path / "calib.txt"
    if isinstance(content, bytes):
        calib.write_bytes(content)
    elif content is not None:
        calib.write_text(content)
    with pytest.raises(EdgeQwenError, match=match) as info:
        build(BuildOptions(recipe(tmp_path, "g"), tmp_path / "out", model=str(random_qwen2), evaluate=False, calib=calib))
    assert info.value.where and info.value.hint
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.building-*"))


def test_calib_with_a_recipe_that_takes_none_is_refused(random_qwen2, tmp_path):
    calib = tmp_path / "c.txt"
    calib.write_text("x")
    with pytest.raises(EdgeQwenError, match="takes no calibration data"):
        build(BuildOptions(recipe(tmp_path, "r", algo="rtn"), tmp_path / "out", model=str(random_qwen2), calib=calib))


def test_gptq_hqq_are_refused_for_int8_and_unknown_algorithms_list_known(tmp_path):
    with pytest.raises(EdgeQwenError, match="gptq is for int4 recipes"):
        load_recipe(recipe(tmp_path, "i8", precision="int8"))
    with pytest.raises(EdgeQwenError, match="hqq is for int4 recipes"):
        load_recipe(recipe(tmp_path, "h8", precision="int8", algo="hqq"))
    with pytest.raises(EdgeQwenError, match="known: autoround, gptq, hqq, k_quant, rtn"):
        load_recipe(recipe(tmp_path, "awq", algo="awq"))
    from edgeqwen.interop.olive_config import olive_workflow

    with pytest.raises(EdgeQwenError, match="does not write hqq workflows") as info:
        olive_workflow(recipe(tmp_path, "hq", algo="hqq"), None, str(tmp_path / "o"))
    assert "OnnxHqqQuantization" in info.value.hint
    # a symmetric GPTQ plan (zero points priced) goes to Olive asymmetric: Olive's symmetric output has no zero points,
    # which ModelBuilder cannot pack for q/k/v
    cfg, notes = olive_workflow("qwen2.5-0.5b-instruct/cpu-x86_64-int4", "embedded:tiny-qwen2", str(tmp_path / "o"),
                                calib_out=tmp_path / "calib.jsonl")
    assert cfg["passes"]["gptq"]["sym"] is False and any("GPTQ asymmetric in Olive" in n for n in notes), cfg["passes"]


@pytest.mark.slow
def test_olive_config_reproduces_the_build_in_olive(trained_qwen2, tmp_path):
    """The written workflow runs under Olive's own CLI, offline, and its model scores like edgeqwen's."""
    cfg_path = tmp_path / "olive" / "workflow.json"
    subprocess.run([sys.executable, "-m", "edgeqwen.cli", "olive-config", "tiny-qwen2/cpu-x86_64-int4", "-o", str(cfg_path),
                    "--olive-output", str(tmp_path / "olive-out")], check=True, capture_output=True, text=True)
    cfg = json.loads(cfg_path.read_text())
    assert [p["type"] for p in cfg["passes"].values()] == ["Gptq", "ModelBuilder"]
    assert cfg["passes"]["gptq"]["overrides"]["model.layers.0.mlp.down_proj"] == {"bits": 8}
    env = dict(os.environ, OLIVE_DISABLE_TELEMETRY="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    olive = subprocess.run([sys.executable, "-m", "olive", "run", "--config", str(cfg_path)], env=env,
                           capture_output=True, text=True)
    assert olive.returncode == 0, olive.stdout[-2000:] + olive.stderr[-2000:]
    out = tmp_path / "olive-out"
    model = onnx.load(str(out / "model.onnx"), load_external_data=False)
    bits = {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node if n.op_type == "MatMulNBits"}
    assert bits["/model/layers.0/mlp/down_proj/MatMulNBits"] == 8 and bits["/model/layers.1/mlp/down_proj/MatMulNBits"] == 4
    summary = evaluate(out, trained_qwen2, EvalConfig(max_windows=3))
    assert summary["kld_mean"] < 0.03  # edgeqwen's build of this recipe: 0.013 (Olive keeps embeddings float)


def test_int8_embedding_table_for_untied_embeddings(trained_qwen3, tmp_path):
    """Qwen3 unties embeddings: onnxruntime's quantizer makes only 4-bit Gather tables; edgeqwen also writes 8-bit ones."""
    kld, size = {}, {}
    for mode in ("quantized", "int8"):
        p = tmp_path / f"{mode}.yaml"
        p.write_text(GPTQ_RECIPE.format(model="tiny-qwen3", precision="int4", algo="rtn").replace(
            "  lm_head: int8\n", f"  lm_head: int8\n  embeddings: {mode}\n"))
        out = build(BuildOptions(str(p), tmp_path / mode))
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        gbq = [n for n in model.graph.node if n.op_type == "GatherBlockQuantized"]
        assert len(gbq) == 1 and next(a.i for a in gbq[0].attribute if a.name == "bits") == (8 if mode == "int8" else 4)
        kld[mode] = json.loads((out / "accuracy.json").read_text())["kld_mean"]
        size[mode] = model_bytes(out)
    vocab, hidden = 1024, 128
    assert size["int8"] - size["quantized"] == pytest.approx(vocab * hidden // 2 + vocab * hidden // 32 // 2, rel=0.01)
    assert kld["int8"] < 0.9 * kld["quantized"], kld


@pytest.mark.parametrize("low_memory", [False, True], ids=["builder", "low-memory"])
def test_lm_head_block_override_keeps_shared_table(tmp_path, low_memory):
    """An int8 lm_head with its own block size (fewer scale bytes per decoded token; 128 by default): the shared
    embedding lookup must read those blocks, not the names/block size the builder wired for the global block."""
    kld, size, blocks = {}, {}, {}
    for head_block in (32, 128):
        p = tmp_path / f"h{head_block}.yaml"
        text = GPTQ_RECIPE.format(model="tiny-qwen2", precision="int4", algo="rtn")
        if head_block != 128:  # 128 is what an int8 head gets by default
            text += f"  overrides:\n    '/lm_head/MatMul': {{block_size: {head_block}}}\n"
        p.write_text(text)
        out = build(BuildOptions(str(p), tmp_path / f"h{head_block}", low_memory=low_memory))
        model = onnx.load(str(out / "model.onnx"), load_external_data=False)
        attr = {n.name: {a.name: a.i for a in n.attribute} for n in model.graph.node
                if n.op_type in ("MatMulNBits", "GatherBlockQuantized")}
        gather = attr["/model/embed_tokens/GatherBlockQuantized"]
        head = next(v for k, v in attr.items() if k.startswith("/lm_head/MatMul"))
        assert gather["bits"] == head["bits"] == 8 and gather["block_size"] == head["block_size"] == head_block
        blocks[head_block] = head["block_size"]
        kld[head_block] = json.loads((out / "accuracy.json").read_text())["kld_mean"]
        size[head_block] = model_bytes(out)
    vocab, hidden = 1024, 128
    # one fp32 scale per block (the int8 head is symmetric: no zero points, export/head_sym.py): 4 blocks per row -> 1
    assert size[32] - size[128] == pytest.approx(vocab * (hidden // 32 - hidden // 128) * 4, rel=0.05)
    assert abs(kld[128] - kld[32]) < 0.1 * kld[32], kld  # int8 is near-lossless at either block size
