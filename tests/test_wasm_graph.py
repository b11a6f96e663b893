"""The web artifact's WebAssembly graph (edgeqwen/web/wasm_graph.py) without a browser: the rewrite, its numbers
against the int4 graph, the accuracy stage that scores it and drops it at a missed gate, and the page's config.
The page running it in Chromium: tests/test_browser.py (.ci/device_browser.sh)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgeqwen.evaluate.core import EvalConfig, evaluate, load_eval_text
from edgeqwen.evaluate.metrics import token_kld
from edgeqwen.evaluate.stage import _gate_other_graphs
from edgeqwen.recipe import Accuracy
from edgeqwen.runtime.runner import Runner, RunnerError
from edgeqwen.web.bundle import refresh_web_config
from edgeqwen.web.wasm_graph import (PASS_TOKENS, WASM_GRAPH, WASM_HEAD, checkpoint_weights, matmulnbits_weight,
                                     write_wasm_graph)


@pytest.fixture(scope="module")
def wasm_art(artifacts, trained_qwen2, tmp_path_factory):
    """The tiny-qwen2 CPU artifact (GPTQ int4 with int8 upgrades and head, a pruned head) with its WebAssembly graph,
    int8 from the checkpoint's weights as the build writes it."""
    art = tmp_path_factory.mktemp("wasm") / "art"
    shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2), art)
    info = write_wasm_graph(art, "model.onnx", checkpoint_weights(trained_qwen2, "Qwen2ForCausalLM"))
    return art, info


def _ops(path) -> dict[str, int]:
    out: dict[str, int] = {}
    for n in onnx.load(str(path), load_external_data=False).graph.node:
        out[n.op_type] = out.get(n.op_type, 0) + 1
    return out


def test_every_matmulnbits_becomes_dynamic_int8_and_nothing_else_changes(wasm_art):
    art, info = wasm_art
    before, after = _ops(art / "model.onnx"), _ops(art / WASM_GRAPH)
    assert info["replaced_nodes"] == before["MatMulNBits"] == after["DynamicQuantizeMatMul"] > 0
    assert "MatMulNBits" not in after
    assert {k: v for k, v in before.items() if k != "MatMulNBits"} == \
        {k: v for k, v in after.items() if k != "DynamicQuantizeMatMul"}
    assert _ops(art / WASM_HEAD) == {"DynamicQuantizeMatMul": 1}  # the pruned head's scoring twin
    assert info["from_checkpoint"] == info["replaced_nodes"]  # every layer linear and the tied head
    assert info["bytes"] == (art / WASM_GRAPH).stat().st_size + (art / (WASM_GRAPH + ".data")).stat().st_size


@pytest.mark.parametrize("source", ["checkpoint", "int4 graph"])
def test_the_int8_weights_are_the_source_weights_within_half_a_step_per_column(wasm_art, trained_qwen2, source,
                                                                                 tmp_path):
    """Each column's int8 weights x its scale = the checkpoint's weights (q/k/v fused as the builder fuses them, the
    tied head = the embedding table), or, without a checkpoint, what MatMulNBits computes with, within half a step."""
    art, _ = wasm_art
    weights_of = checkpoint_weights(trained_qwen2, "Qwen2ForCausalLM")
    if source == "int4 graph":
        shutil.copytree(art, tmp_path / "art")
        art = tmp_path / "art"
        assert write_wasm_graph(art, "model.onnx")["from_checkpoint"] == 0
    src = onnx.load(str(art / "model.onnx"))
    dst = onnx.load(str(art / WASM_GRAPH))
    src_values = {t.name: numpy_helper.to_array(t) for t in src.graph.initializer}
    dst_values = {t.name: numpy_helper.to_array(t) for t in dst.graph.initializer}
    new = {n.name: n for n in dst.graph.node if n.op_type == "DynamicQuantizeMatMul"}
    bits_seen = set()
    for node in (n for n in src.graph.node if n.op_type == "MatMulNBits"):
        w = matmulnbits_weight(node, src_values) if source == "int4 graph" else weights_of(node.name)
        q, scale = dst_values[new[node.name].input[1]], dst_values[new[node.name].input[2]]
        assert q.dtype == np.int8 and q.shape == w.shape and scale.shape == (w.shape[1],)
        assert np.all(np.abs(q.astype(np.float32) * scale - w) <= 0.5 * scale * (1 + 1e-5) + 1e-12), node.name
        assert np.abs(q).max() == 127  # the range is used
        bits_seen.add(next(a.i for a in node.attribute if a.name == "bits"))
    assert bits_seen == {4, 8}  # the fixture's plan mixes int4 layers with int8 upgrades and head


def test_the_wasm_graph_decodes_closer_to_pytorch_than_the_int4_graph(wasm_art, trained_qwen2):
    """Against the PyTorch fp32 model, the W8A8 graph decoding (one token per pass: activations quantized per token)
    is closer than the int4 graph; a whole window per pass (one scale for 256 tokens' activations) less close, which
    is why the page feeds it 16."""
    from edgeqwen.evaluate.core import load_reference, reference_logits

    art, _ = wasm_art
    main, wasm = Runner(art, verify=False, providers="cpu"), Runner(art, verify=False, providers="cpu",
                                                                      decoder_file=WASM_GRAPH)
    ids = main.encode(load_eval_text(None))[:256]
    ref = reference_logits(load_reference(trained_qwen2), ids)
    int4 = float(token_kld(ref, main.score(ids)).mean())
    kld = {}
    for per_pass in (1, PASS_TOKENS, 256):
        wasm.max_step_tokens = per_pass
        kld[per_pass] = float(token_kld(ref, wasm.score(ids)).mean())
    print(f"KLD vs the PyTorch model: int4 graph {int4:.4f}, W8A8 graph by tokens per pass {kld}")
    assert kld[1] < kld[PASS_TOKENS] < kld[256] and kld[PASS_TOKENS] < int4 / 2
    wasm.max_step_tokens = PASS_TOKENS
    top1 = {name: float((ref.argmax(-1) == r.score(ids).argmax(-1)).mean()) for name, r in (("int4", main),
                                                                                              ("w8a8", wasm))}
    assert top1["w8a8"] >= top1["int4"], top1


def test_a_decoder_graph_the_artifact_lacks_is_named(wasm_art):
    art, _ = wasm_art
    with pytest.raises(RunnerError, match="no decoder graph model.web.onnx"):
        Runner(art, verify=False, decoder_file="model.web.onnx")


def _web_config(art) -> None:
    (art / "web").mkdir(exist_ok=True)
    config = {"model": "model.onnx", "external_data": ["model.onnx.data"],
              "backends": {"webgpu": {"module": "ort.webgpu.min.mjs"}, "wasm": {"module": "ort.wasm.min.mjs"}}}
    (art / "web" / "config.json").write_text(json.dumps(config))
    refresh_web_config(art)


def test_the_accuracy_stage_scores_the_wasm_graph_and_its_gate_drops_it(wasm_art, trained_qwen2, tmp_path):
    src, _ = wasm_art
    art = tmp_path / "art"
    shutil.copytree(src, art)
    _web_config(art)
    config = json.loads((art / "web" / "config.json").read_text())["backends"]
    assert (config["wasm"]["model"], config["wasm"]["max_step_tokens"]) == (WASM_GRAPH, PASS_TOKENS)
    assert config["wasm"]["external_data"] == [WASM_GRAPH + ".data"]
    assert (config["webgpu"]["model"], config["webgpu"]["max_step_tokens"]) == ("model.onnx", 1)

    summary = evaluate(art, trained_qwen2, EvalConfig(window=128, max_windows=2), graphs={WASM_GRAPH: PASS_TOKENS})
    numbers = summary["graphs"][WASM_GRAPH]
    assert numbers["tokens"] == summary["tokens"] == 128 and numbers["tokens_per_pass"] == PASS_TOKENS
    assert 0 < numbers["kld_mean"] < 0.2 and numbers["kld_mean"] != summary["kld_mean"]
    assert len(numbers["greedy_match_tokens"]) == len(summary["greedy_match_tokens"])

    _gate_other_graphs(art, summary, Accuracy(max_kld=1.0))  # met: kept
    assert numbers["status"] == "pass" and (art / WASM_GRAPH).exists()
    _gate_other_graphs(art, summary, Accuracy(max_kld=numbers["kld_mean"] / 2))  # missed: dropped, page re-pointed
    assert numbers["status"] == "dropped" and "mean KLD" in numbers["missed"][0]
    assert not any((art / f).exists() for f in (WASM_GRAPH, WASM_GRAPH + ".data", WASM_HEAD))
    wasm = json.loads((art / "web" / "config.json").read_text())["backends"]["wasm"]
    assert (wasm["model"], wasm["external_data"], wasm["max_step_tokens"]) == ("model.onnx", ["model.onnx.data"], None)


def test_int8_products_are_exact_where_the_cpu_could_saturate(wasm_art):
    """DynamicQuantizeMatMul's u8 x s8 products: x86 CPUs without VNNI add them in pairs into int16, which saturates
    (255 x 127 x 2 > 32767); the runner's `session.x64quantprecision` makes onnxruntime use its u8 x u8 kernel for such
    weights. Activations that quantize exactly (integers over [-128, 127]: scale 1, zero point 128) against weights at
    +-127: the products must be A @ W exactly. Also run under qemu Haswell (tests/test_device_avx2.py)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    art, _ = wasm_art
    rng = np.random.default_rng(0)
    k, n = 256, 64
    w = rng.choice(np.array([-127, -126, 126, 127], np.int8), size=(k, n))
    a = rng.integers(-128, 128, size=(3, k)).astype(np.float32)
    a[0, :2] = (-128, 127)  # the range [-128, 127] in every row set: scale 1, zero point 128
    a[:, 2:] = np.where(rng.random((3, k - 2)) < 0.5, 127, a[:, 2:])  # many 255s after the zero point
    node = helper.make_node("DynamicQuantizeMatMul", ["a", "w", "s"], ["y"], domain="com.microsoft")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("a", TensorProto.FLOAT, [3, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, n])],
                              [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(n, np.float32), "s")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    runner = Runner(art, verify=False, providers="cpu", decoder_file=WASM_GRAPH)
    so = runner.session.get_session_options()
    assert so.get_session_config_entry("session.x64quantprecision") == "1"
    got = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    want = a.astype(np.int64) @ w.astype(np.int64)
    assert np.array_equal(got, want.astype(np.float32)), float(np.abs(got - want).max())
