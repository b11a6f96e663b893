"""What MatMulNBits computes with, in torch: a weight quantized to onnxruntime's block format and back.

Bit-for-bit the result of onnxruntime's own block quantizer (`quantize_matmul_4bits/8bits`, MLAS `range2scalezp` /
`range2scale`: min and max taken through zero, scale = range / (2^bits − 1), the zero point and every value rounded
half away from zero, then clamped) followed by its exact inverse (graph_quant.ort_block_dequant), which
tests/test_fake_quant.py checks across formats, shapes, padding and rounding ties. Working on the [N, K] torch
weight in row chunks that stay in cache makes it ~10x faster than the numpy round trip, which has to transpose the
weight twice: the sensitivity measurement fake-quantizes every decoder-layer matrix of the model once or more.
"""

from __future__ import annotations

ROWS = 256  # output rows per chunk: 256 × K fp32 stays in a core's L2 for K up to ~2k and in L3 beyond


def _round_half_away(x):
    """C's roundf: torch.round rounds ties to even, so ties it took down are taken up (only the non-negative ties
    matter here: a negative value rounds to a code below zero, clamped to 0 either way)."""
    r = x.round()
    return r.add_((x - r).eq_(0.5))


def block_fake_quant(w_nk, bits: int, block: int, symmetric: bool):
    """torch [N, K] weight (any float dtype) → the fp32 [N, K] weight MatMulNBits computes with at this format
    (blocks of `block` along K, one scale, and a zero point unless symmetric, per block; K padded with zeros)."""
    import torch

    n, k = w_nk.shape
    pad = (-k) % block
    top, mid = float((1 << bits) - 1), float(1 << (bits - 1))
    out = torch.empty((n, k), dtype=torch.float32)
    for a in range(0, n, ROWS):
        wb = w_nk[a:a + ROWS].float()
        if pad:
            wb = torch.nn.functional.pad(wb, (0, pad))
        wb = wb.reshape(wb.shape[0], -1, block)
        lo, hi = wb.amin(-1, keepdim=True), wb.amax(-1, keepdim=True)
        if symmetric:
            scale = torch.where(hi.abs() > lo.abs(), hi, lo) / -mid
        else:
            lo.clamp_(max=0.0)
            hi.clamp_(min=0.0)
            scale = (hi - lo) / top
        nonzero = scale != 0
        safe = torch.where(nonzero, scale, 1.0)
        if symmetric:
            zp = torch.full_like(scale, mid)
        else:
            zero_fp = torch.where(nonzero, 0.0 - lo / safe, lo)
            zp = torch.where(zero_fp < 0, 0.0, torch.where(zero_fp > top, top, _round_half_away(zero_fp)))
        rcp = torch.where(nonzero, 1.0 / safe, 0.0)
        x = wb * rcp
        x += zp
        q = _round_half_away(x).clamp_(0.0, top)
        q.sub_(zp).mul_(scale)
        out[a:a + ROWS] = q.reshape(q.shape[0], -1)[:, :k]
    return out
