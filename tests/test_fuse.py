"""export/fuse.py (through graph_edit.edit_graph): gate and up as one MatMulNBits + Split computes what the two nodes
did, bit for bit, and is left alone where their settings differ; export/head_sym.py's symmetric int8 head."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgeqwen.export.fuse import fuse_gate_up
from edgeqwen.export.graph_edit import edit_graph
from edgeqwen.quantize.graph_quant import ort_block_quant

K, N = 96, 40


def _mlp(tmp_path, up_bits: int, zero_points: bool = True):
    """input -> gate (4-bit) and up (up_bits) MatMulNBits -> Mul, weights in external data as the exporters write."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    for part, bits in (("gate_proj", 4), ("up_proj", up_bits)):
        packed, scales, zp = ort_block_quant(rng.standard_normal((K, N)).astype(np.float32), bits, 32, not zero_points)
        base = f"/model/layers.0/mlp/{part}/MatMul"
        inits += [numpy_helper.from_array(packed, f"{base}.q"),
                  numpy_helper.from_array(scales.reshape(-1), f"{base}.s")]
        ins = ["x", f"{base}.q", f"{base}.s"]
        if zero_points:
            inits.append(numpy_helper.from_array(zp.reshape(-1), f"{base}.zp"))
            ins.append(f"{base}.zp")
        nodes.append(helper.make_node("MatMulNBits", ins, [part], name=base + "NBits", domain="com.microsoft", K=K, N=N,
                                      bits=bits, block_size=32, accuracy_level=4))
    nodes.append(helper.make_node("Mul", ["gate_proj", "up_proj"], ["y"]))
    graph = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "s", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, "s", N])], inits)
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)]
    model = helper.make_model(graph, opset_imports=opsets)
    onnx.save_model(model, str(tmp_path / "model.onnx"), save_as_external_data=True, location="model.onnx.data",
                    size_threshold=0)
    return tmp_path


def _run(folder, x):
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


@pytest.mark.parametrize("zero_points", [True, False])
def test_fused_gate_up_computes_the_same_bits(tmp_path, zero_points):
    art = _mlp(tmp_path, 4, zero_points)
    x = np.random.default_rng(1).standard_normal((1, 5, K)).astype(np.float32)
    before = _run(art, x)
    notes = edit_graph(art, [fuse_gate_up])
    assert len(notes) == 1 and "1 layer" in notes[0]
    model = onnx.load(str(art / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in model.graph.node]
    assert ops == ["MatMulNBits", "Split", "Mul"]
    fused = model.graph.node[0]
    assert fused.name == "/model/layers.0/mlp/gate_up_proj/MatMulNBits"
    assert {a.name: a.i for a in fused.attribute}["N"] == 2 * N
    assert sorted(p.name for p in art.iterdir()) == ["model.onnx", "model.onnx.data"]  # the old data file rewritten
    assert np.array_equal(_run(art, x), before)


def test_gate_and_up_with_different_settings_stay_apart(tmp_path):
    art = _mlp(tmp_path, 8)
    data = (art / "model.onnx.data").read_bytes()
    assert edit_graph(art, [fuse_gate_up]) == []
    assert (art / "model.onnx.data").read_bytes() == data
    assert [n.op_type for n in onnx.load(str(art / "model.onnx"), load_external_data=False).graph.node] == \
        ["MatMulNBits", "MatMulNBits", "Mul"]


def test_the_int8_head_is_symmetric_from_the_checkpoint(artifacts, trained_qwen2):
    """export/head_sym.py on a built artifact: the tied head and its table read one int8 tensor without zero points,
    exactly onnxruntime's symmetric 8-bit quantization of the checkpoint's embedding (GPTQ's input leaves it alone)."""
    from edgeqwen.quantize.gptq_stream import Shards
    from edgeqwen.quantize.graph_quant import ort_block_quant

    art = artifacts.get("tiny-qwen2/cpu-x86_64-int4", trained_qwen2)
    model = onnx.load(str(art / "model.onnx"))
    head = next(n for n in model.graph.node if n.name.startswith("/lm_head/MatMul"))
    table = next(n for n in model.graph.node if n.op_type == "GatherBlockQuantized")
    assert len(head.input) == 3 and len(table.input) == 3 and head.input[2] == table.input[2]
    attrs = {a.name: a.i for a in head.attribute}
    assert attrs["bits"] == 8
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    want = Shards(trained_qwen2).get("model.embed_tokens.weight").float().numpy().T  # [K, N]
    packed, scales, _ = ort_block_quant(np.ascontiguousarray(want), 8, attrs["block_size"], True)
    assert np.array_equal(values[head.input[1]].reshape(packed.shape), packed)
    assert np.array_equal(values[head.input[2]].reshape(scales.shape), scales)
    assert "lm_head int8 symmetric" in (art / "manifest.json").read_text()
