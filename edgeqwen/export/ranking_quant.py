"""The shortlist head's ranking copy (shortlist_head.py): the head's weights block-quantized to 2 or 4 bits in
MatMulNBits' layout, for ranking the vocabulary — only the order of the scores near the top matters, never their
values, so the copy is as small as the candidates' recall allows.

- 4 bits: symmetric, onnxruntime's own block quantizer (no zero points).
- 2 bits: asymmetric (4 levels and a zero point per block), the scale and zero point of each block searched for the
  least squared error (min/max scaling wastes two of four levels on one outlier each; the searched grid's error is
  ~30 % lower on Gaussian weights). onnxruntime 1.32 runs 2-bit MatMulNBits with int8 activations natively on AVX2,
  AVX-512 VNNI and ARM dot-product CPUs (MLAS); its read is half the 4-bit copy's.
"""

from __future__ import annotations

import numpy as np

RANKING_BITS = (2, 4)
_SHRINK = np.linspace(0.6, 1.0, 9)  # candidate scales: this share of the block's (max - min) / 3
_ROWS = 4096  # rows quantized at a time (the search holds a few float copies of them)


def ranking_copy(w: np.ndarray, bits: int, block: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """w [N, K] (one row per token) → (packed [N, blocks, block*bits/8] uint8, scales [N, blocks] float32,
    zero points [N, ceil(blocks*bits/8)] uint8 or None for symmetric), K padded to whole blocks."""
    if bits not in RANKING_BITS:
        raise ValueError(f"a ranking copy is {' or '.join(map(str, RANKING_BITS))}-bit, not {bits}")
    if bits == 4:
        from ..quantize.graph_quant import ort_block_quant

        packed, scales, _ = ort_block_quant(np.ascontiguousarray(w.T), 4, block, True)
        return packed, scales, None
    n, k = w.shape
    blocks = -(-k // block)
    packed = np.empty((n, blocks, block // 4), np.uint8)
    scales = np.empty((n, blocks), np.float32)
    zeros = np.zeros((n, -(-blocks // 4)), np.uint8)
    for r in range(0, n, _ROWS):
        x = np.asarray(w[r:r + _ROWS], np.float32)
        if blocks * block != k:
            x = np.pad(x, ((0, 0), (0, blocks * block - k)))
        q, s, z = _search_2bit(x.reshape(len(x), blocks, block))
        packed[r:r + len(x)] = _pack(q.reshape(-1, block)).reshape(len(x), blocks, -1)
        scales[r:r + len(x)] = s
        zeros[r:r + len(x)] = _pack(z)
    return packed, scales, zeros


def _search_2bit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [R, B, L] → levels [R, B, L] in 0..3, scales [R, B], zero points [R, B] in 0..3: per block, the (scale, zero
    point) on the grid with the least squared error."""
    lo, hi = x.min(-1), x.max(-1)
    span = np.maximum(hi - lo, 1e-12) / 3
    best_err = np.full(lo.shape, np.inf, np.float32)
    best_s = span.astype(np.float32)
    best_z = np.zeros(lo.shape, np.int64)
    for shrink in _SHRINK:
        s = (span * shrink).astype(np.float32)
        for z in range(4):
            q = np.clip(np.rint(x / s[..., None]) + z, 0, 3)
            err = np.square((q - z) * s[..., None] - x).sum(-1)
            better = err < best_err
            best_err = np.where(better, err, best_err)
            best_s = np.where(better, s, best_s)
            best_z = np.where(better, z, best_z)
    q = np.clip(np.rint(x / best_s[..., None]) + best_z[..., None], 0, 3).astype(np.uint8)
    return q, best_s, best_z.astype(np.uint8)


def _pack(levels: np.ndarray) -> np.ndarray:
    """[R, C] 2-bit levels → [R, ceil(C / 4)] bytes in MatMulNBits' order (gptq_math.pack_uint8)."""
    import torch

    from ..quantize.gptq_math import pack_uint8

    return pack_uint8(torch.from_numpy(np.ascontiguousarray(levels)), 2).numpy()


def dequantize(packed: np.ndarray, scales: np.ndarray, zeros: np.ndarray | None, bits: int, k: int) -> np.ndarray:
    """The [N, K] weights a ranking copy scores with (what MatMulNBits computes from it: graph_quant's dequantizer)."""
    from ..quantize.graph_quant import ort_block_dequant

    block = packed.shape[2] * 8 // bits
    return ort_block_dequant(packed, scales, zeros, bits, block, zeros is None, k).T
