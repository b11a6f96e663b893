"""Device targets beyond the x86 CPU: graph/config inspection and CPU-provider logits checks."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgeqwen.build import BuildOptions, build
from edgeqwen.errors import EdgeQwenError
from edgeqwen.recipe import load_recipe
from edgeqwen.runtime import Runner, Sampling
from edgeqwen.runtime.agreement import top2_margin


def inputs_dtype(path):
    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    return {i.name: i.type.tensor_type.elem_type for i in m.graph.input}, m


@pytest.mark.parametrize("recipe, provider", [("tiny-qwen2/cuda-int4", "cuda"), ("tiny-qwen3/cuda-fp16", "cuda"),
                                              ("tiny-qwen3/webgpu-int4", "webgpu")])
def test_gpu_targets_are_fp16_graphs_for_their_provider(recipe, provider, request, artifacts):
    family = "qwen3" if "qwen3" in recipe else "qwen2"
    path = artifacts.get(recipe, request.getfixturevalue(f"trained_{family}"))
    dtypes, model = inputs_dtype(path)
    assert dtypes["past_key_values.0.key"] == onnx.TensorProto.FLOAT16
    cfg = json.loads((path / "genai_config.json").read_text())
    assert provider in cfg["model"]["decoder"]["session_options"]["provider_options"][0]
    resolved = load_recipe(recipe)
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            assert attrs["block_size"] == resolved.block_size and attrs.get("accuracy_level", 0) == resolved.accuracy_level


def test_ort_format_matches_onnx_logits(trained_qwen2, artifacts):
    """ort-mobile (model.ort, optimized ahead of time) against the same quantization as plain ONNX (cpu-arm64)."""
    assert load_recipe("tiny-qwen2/ort-mobile-int4").recipe.quantization == load_recipe("tiny-qwen2/cpu-arm64-int4").recipe.quantization
    ort_art = artifacts.get("tiny-qwen2/ort-mobile-int4", trained_qwen2)
    onnx_art = artifacts.get("tiny-qwen2/cpu-arm64-int4", trained_qwen2)
    a, b = Runner(ort_art), Runner(onnx_art)
    ids = a.encode("The assert statement is a convenient way to insert debugging assertions into a program")
    la, lb = a.score(ids), b.score(ids)
    tol = 1e-2  # measured: 0 (the same kernels on the same shapes, on AVX-512 and under qemu -cpu Haswell)
    assert np.abs(la - lb).max() < tol
    decided = np.array([top2_margin(row) > 2 * tol for row in lb])  # a closer tie may go either way within tol
    assert decided.mean() > 0.9 and (la.argmax(-1) == lb.argmax(-1))[decided].all()
    manifest = json.loads((ort_art / "manifest.json").read_text())
    assert manifest["ort_format"]["required_operators"] and "model.ort" in manifest["files"]
    assert "# - model.ort" in (ort_art / "required_operators.config").read_text()  # no temp paths: reproducible


def test_precision_the_target_lacks_fails_before_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: webgpu\nprecision: int8\n")
    with pytest.raises(EdgeQwenError, match="(?s)precision 'int8' is not supported by target 'webgpu'.*webgpu supports: int4"):
        load_recipe(str(recipe))


def test_ort_format_target_must_use_cpu_provider(tmp_path, monkeypatch):
    (tmp_path / "targets").mkdir()
    (tmp_path / "targets" / "bad.yaml").write_text(
        "version: 1\nname: bad\ndescription: x\nexecution_provider: cuda\nisa: x\nprecisions: [int4]\nartifact_format: ort\n")
    monkeypatch.setenv("EDGEQWEN_HOME", str(tmp_path))
    from edgeqwen.targets import load_target

    with pytest.raises(EdgeQwenError, match="artifact_format ort is for the CPU execution provider"):
        load_target("bad")


@pytest.mark.parametrize("recipe", ["tiny-qwen2/cpu-arm64-int4", "tiny-qwen2/ort-mobile-int4", "tiny-qwen2/cuda-int4",
                                    "tiny-qwen2/cuda-fp16", "tiny-qwen2/webgpu-int4", "tiny-qwen3/ort-mobile-int4",
                                    "tiny-qwen2/qnn-npu-int8", "tiny-qwen3/qnn-npu-int8",
                                    "tiny-qwen3/cpu-x86_64-portable-int4"])
def test_every_target_default_recipe_passes_its_accuracy_gate(recipe, request, artifacts):
    family = "qwen3" if "qwen3" in recipe else "qwen2"
    path = artifacts.get(recipe, request.getfixturevalue(f"trained_{family}"), evaluate=True)
    acc = json.loads((path / "accuracy.json").read_text())
    assert acc["status"] == "pass" and acc["gate"] == load_recipe(recipe).recipe.accuracy.thresholds()


def test_qnn_npu_graph_is_static_standard_ops_and_qdq(trained_qwen2, artifacts):
    """NPU compilers need static shapes, standard operators and QDQ-encoded weights: check all three."""
    path = artifacts.get("tiny-qwen2/qnn-npu-int8", trained_qwen2)
    model = onnx.load(str(path / "model.onnx"), load_external_data=False)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}  # no com.microsoft contrib operators
    for v in [*model.graph.input, *model.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        assert all(isinstance(d, int) and d > 0 for d in dims), (v.name, dims)
    shapes = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim] for v in [*model.graph.input, *model.graph.output]}
    assert shapes["input_ids"] == [1, 1] and shapes["past_key_values.0.key"] == [1, 2, 511, 32]
    assert shapes["present.0.key"] == [1, 2, 512, 32] and shapes["attention_mask"] == [1, 512]
    inits = {i.name: i for i in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert len(dq) == 4 * 7 + 2  # every decoder linear, lm_head and the embedding table
    for n in dq:
        assert inits[n.input[0]].data_type == onnx.TensorProto.INT8 and len(inits[n.input[1]].dims) == 1
    matmul_weights = [n.input[1] for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert not matmul_weights  # no float weight left behind
    runner = Runner(path)
    assert runner.static_slots == 511 and runner.context_length == 512
    out = runner.generate(runner.encode("The assert statement"), Sampling(max_new_tokens=8, ignore_eos=True))
    assert len(out.token_ids) == 8


def test_static_npu_target_refuses_the_builder_exporter(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: qnn-npu\nprecision: int8\n")
    with pytest.raises(EdgeQwenError, match="(?s)needs static shapes / QDQ weights.*exporter: portable"):
        build(BuildOptions(str(recipe), tmp_path / "out"))
    assert not (tmp_path / "out").exists()
