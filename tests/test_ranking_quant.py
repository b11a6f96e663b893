"""The shortlist head's ranking copy (export/ranking_quant.py): 2-bit and 4-bit copies in MatMulNBits' layout that
onnxruntime computes exactly as the quantizer describes, a 2-bit grid whose error beats min/max scaling, a recipe
that asks for other bits refused, and the recall a copy gives on a trained tiny model's hidden states."""

from __future__ import annotations

import numpy as np
import pytest

from edgeqwen.export.ranking_quant import dequantize, ranking_copy


def _matmulnbits(packed, scales, zeros, bits: int, k: int, block: int, level: int):
    """A one-node graph: MatMulNBits over these tensors (N = rows of the copy)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = len(packed)
    inits = [numpy_helper.from_array(packed, "W"), numpy_helper.from_array(scales.reshape(-1), "S")]
    inputs = ["A", "W", "S"]
    if zeros is not None:
        inits.append(numpy_helper.from_array(zeros, "Z"))
        inputs.append("Z")
    node = helper.make_node("MatMulNBits", inputs, ["Y"], domain="com.microsoft", K=k, N=n, bits=bits,
                            block_size=block, accuracy_level=level)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("A", TensorProto.FLOAT, [None, k])],
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, n])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize("k", [896, 200])  # 200: the last block padded, and (2-bit) zero points of a partial byte
def test_onnxruntime_computes_what_the_copy_describes(bits, k):
    rng = np.random.default_rng(bits)
    w = rng.standard_normal((300, k)).astype(np.float32) * 0.05
    packed, scales, zeros = ranking_copy(w, bits, 128)
    assert (zeros is None) == (bits == 4)
    deq = dequantize(packed, scales, zeros, bits, k)
    a = rng.standard_normal((3, k)).astype(np.float32)
    got = _matmulnbits(packed, scales, zeros, bits, k, 128, 1).run(None, {"A": a})[0]  # fp32 activations: exact
    np.testing.assert_allclose(got, a @ deq.T, rtol=1e-4, atol=1e-4)
    fast = _matmulnbits(packed, scales, zeros, bits, k, 128, 4).run(None, {"A": a})[0]  # the shipped int8 kernel
    assert np.corrcoef(fast.ravel(), got.ravel())[0, 1] > 0.999


def test_the_2_bit_grid_beats_min_max_scaling():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((512, 512)).astype(np.float32)
    err = np.sqrt(np.mean(np.square(dequantize(*ranking_copy(w, 2, 128), 2, 512) - w)))
    x = w.reshape(512, -1, 128)
    lo, hi = x.min(-1, keepdims=True), x.max(-1, keepdims=True)
    s = (hi - lo) / 3
    z = np.clip(np.rint(-lo / s), 0, 3)
    minmax = np.sqrt(np.mean(np.square((np.clip(np.rint(x / s) + z, 0, 3) - z) * s - x)))
    assert err < 0.8 * minmax, (err, minmax)  # ~0.37 vs ~0.50 of the weights' spread
    four = np.sqrt(np.mean(np.square(dequantize(*ranking_copy(w, 4, 128), 4, 512) - w)))
    assert four < 0.4 * err


def test_other_bits_are_refused(tmp_path):
    from edgeqwen.recipe import load_recipe

    with pytest.raises(ValueError, match="2 or 4"):
        ranking_copy(np.zeros((4, 128), np.float32), 3, 128)
    p = tmp_path / "r.yaml"
    p.write_text("version: 1\nmodel: embedded:tiny-qwen2\ntarget: cpu-x86_64\nprecision: int4\n"
                 "quantization: {lm_head_shortlist: 32, lm_head_shortlist_bits: 3}\n")
    with pytest.raises(Exception, match="lm_head_shortlist_bits 3 must be 2 or 4"):
        load_recipe(str(p))


def test_recall_on_a_trained_models_hidden_states(trained_qwen3):
    """The untied head of the trained tiny Qwen3 over its own final hidden states on held-out text: the 4-bit copy's
    top 32 hold the true top-1 everywhere, the 2-bit copy's nearly everywhere and its top 1 agrees far less — what
    the shortlist's K is for."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from edgeqwen.train import corpus_text

    model = AutoModelForCausalLM.from_pretrained(trained_qwen3, dtype=torch.float32).eval()
    ids = AutoTokenizer.from_pretrained(trained_qwen3)(corpus_text("eval")[:6000], return_tensors="pt").input_ids[:, :512]
    with torch.no_grad():
        h = model(ids, output_hidden_states=True).hidden_states[-1][0].numpy()  # after the final norm
    w = model.lm_head.weight.detach().numpy()
    top1 = (h @ w.T).argmax(-1)
    recall, agree = {}, {}
    for bits in (2, 4):
        coarse = h @ dequantize(*ranking_copy(w, bits, 32), bits, w.shape[1]).T
        order = np.argsort(-coarse, axis=-1)
        recall[bits] = float(np.mean([t in row[:32] for t, row in zip(top1, order)]))
        agree[bits] = float(np.mean(order[:, 0] == top1))
    assert recall[4] >= 0.99 and recall[2] >= 0.97, recall
    assert agree[4] > agree[2], agree
