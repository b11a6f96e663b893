"""export/zero_points.py: a MatMulNBits whose zero points are all the default level loses that input, and onnxruntime
computes the same; real zero points (and HQQ's float ones) are left alone."""

from __future__ import annotations

import numpy as np
import pytest

from edgeqwen.export.zero_points import default_levels, drop_default_zero_points
from edgeqwen.quantize.graph_quant import ort_block_quant


def test_default_levels_read_every_block_and_skip_the_padding():
    eights = np.full((3, 2), 0x88, np.uint8)  # 4 bits, 3 blocks per row: the last byte's high nibble is padding
    assert default_levels(eights, 4, 3, 3)
    padded = eights.copy()
    padded[:, 1] = 0x08  # padding nibble 0, as onnxruntime's quantizer leaves it
    assert default_levels(padded, 4, 3, 3) and default_levels(padded.reshape(-1), 4, 3, 3)
    off = padded.copy()
    off[2, 1] = 0x07  # a real block (the third) at level 7
    assert not default_levels(off, 4, 3, 3) and not default_levels(off.reshape(-1), 4, 3, 3)
    assert default_levels(np.full((2, 3), 128, np.uint8), 8, 3, 2)
    assert not default_levels(np.full((2, 3), 127, np.uint8), 8, 3, 2)
    assert default_levels(np.full((2, 1), 0b10101010, np.uint8), 2, 4, 2)  # 2 bits: level 2, four per byte


def _graph(tmp_path):
    """Three MatMulNBits over one input: symmetric weights with their zero points spelled out (all 8), asymmetric
    ones (real zero points), and float zero points (an HQQ-style offset)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    k, n, block = 96, 40, 32  # 3 blocks: an odd count, so each row's zero points end in a padding nibble
    nodes, inits = [], []
    for name, sym in (("sym", True), ("asym", False), ("float", False)):
        packed, scales, zp = ort_block_quant(rng.standard_normal((k, n)).astype(np.float32), 4, block, sym)
        if sym:
            zp = np.where(np.arange(zp.shape[1]) < 1, 0x88, 0x08).astype(np.uint8)[None].repeat(n, 0)
        if name == "float":
            zp = rng.random((n, 3)).astype(np.float32) * 15
        inits += [numpy_helper.from_array(packed, f"{name}.w"), numpy_helper.from_array(scales.reshape(-1), f"{name}.s"),
                  numpy_helper.from_array(zp.reshape(-1), f"{name}.z")]  # [N * bytes], as the builder writes
        nodes.append(helper.make_node("MatMulNBits", ["x", f"{name}.w", f"{name}.s", f"{name}.z"], [name],
                                      name=f"/{name}/MatMulNBits", domain="com.microsoft", K=k, N=n, bits=4,
                                      block_size=block, accuracy_level=4))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, k])],
                              [helper.make_tensor_value_info(o, TensorProto.FLOAT, [2, n]) for o in ("sym", "asym", "float")],
                              inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])


def _run(model, x):
    import onnxruntime as ort

    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_default_zero_points_are_dropped_and_the_output_is_the_same(tmp_path):
    model = _graph(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 96)).astype(np.float32)
    before = _run(model, x)
    note = drop_default_zero_points(model)
    assert note and "1 MatMulNBits" in note
    inputs = {n.name: list(n.input) for n in model.graph.node}
    assert inputs["/sym/MatMulNBits"] == ["x", "sym.w", "sym.s"]  # no trailing empty input
    assert len(inputs["/asym/MatMulNBits"]) == 4 and len(inputs["/float/MatMulNBits"]) == 4
    assert "sym.z" not in {t.name for t in model.graph.initializer}  # an unused initializer goes too
    after = _run(model, x)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)  # the kernel reads an absent zero point as the default: same numbers
    assert drop_default_zero_points(model) is None  # nothing left to drop


@pytest.mark.parametrize("bits", [2, 8])
def test_other_bit_widths_use_their_own_middle_level(bits):
    zp = np.full((4, 2), 0b10101010 if bits == 2 else 128, np.uint8)
    blocks = 8 if bits == 2 else 2
    assert default_levels(zp.reshape(-1), bits, blocks, 4)
    zp[3, 1] ^= 1
    assert not default_levels(zp.reshape(-1), bits, blocks, 4)
