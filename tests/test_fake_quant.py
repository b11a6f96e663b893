"""The torch block fake-quantizer against onnxruntime's own quantizer and its exact inverse, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgeqwen.quantize.fake_quant import block_fake_quant  # noqa: E402
from edgeqwen.quantize.graph_quant import ort_block_dequant, ort_block_quant  # noqa: E402


def ort_round_trip(w_nk, bits, block, symmetric):
    w = np.ascontiguousarray(w_nk.float().numpy().T)
    packed, scales, zps = ort_block_quant(w, bits, block, symmetric)
    return torch.from_numpy(ort_block_dequant(packed, scales, zps, bits, block, symmetric, w.shape[0]).T.copy())


def weights(n, k, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((n, k), generator=g) * 0.02
    w[0, :5] = 0.0  # zeros inside a block
    w[1] = 0.0  # a whole row of zeros: scale 0
    w[2] = w[2].abs()  # no negative value: the zero point clamps to 0
    w[3] = -w[3].abs()  # no positive value: the zero point clamps to the top
    if k >= 16:  # exact rounding ties: min 0 and max 15 give scale 1 and zero point 0, so 2.5 → 3, not 2
        w[4, :16] = torch.tensor([0.0, 15.0, 2.5, 4.5, 6.5, 8.5, 10.5, 12.5, 0.5, 1.5, 3.5, 5.5, 7.5, 9.5, 11.5, 13.5])
    return w


@pytest.mark.parametrize("n,k", [(300, 256), (64, 160), (513, 896), (5, 16)])
@pytest.mark.parametrize("bits,block,symmetric", [(4, 128, False), (4, 32, False), (4, 64, True), (8, 128, False),
                                                  (8, 32, True), (4, 16, False)])
def test_block_fake_quant_is_onnxruntimes_round_trip_bit_for_bit(n, k, bits, block, symmetric):
    w = weights(n, k, seed=n + k + bits + block)
    got = block_fake_quant(w, bits, block, symmetric)
    want = ort_round_trip(w, bits, block, symmetric)
    assert got.dtype == torch.float32 and got.shape == w.shape
    assert torch.equal(got, want), f"{int((got != want).sum())} values differ"
    if k >= 16 and not symmetric and bits == 4 and block == 16:
        assert got[4, 2] == 3.0  # the tie rounded away from zero, as C's roundf does


def test_bf16_weights_quantize_as_their_fp32_values():
    w = weights(64, 256, seed=1).bfloat16()
    assert torch.equal(block_fake_quant(w, 4, 128, False), ort_round_trip(w.float(), 4, 128, False))
