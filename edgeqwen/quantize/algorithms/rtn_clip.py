"""RTN with a clipping search: per block, the range is shrunk by the ratio (1.0 … 0.55) that minimises the squared
rounding error of that block's weights, then rounded to nearest (the MSE clip search llama.cpp's and AWQ's quantizers
use, without calibration data). Same MatMulNBits layout and size as RTN; numpy only.

Added through the registry alone: this module and its test.
"""

from __future__ import annotations

import numpy as np

from ..registry import AlgorithmSpec, OliveMapping, TuneCandidate, register

RATIOS = tuple(np.round(np.linspace(1.0, 0.55, 10), 3))

SPEC = register(AlgorithmSpec(
    name="rtn_clip",
    summary="round-to-nearest with a per-block MSE clipping search (no calibration)",
    stage="graph", low_memory="rtn_clip", portable=True,
    block_quantizer="edgeqwen.quantize.algorithms.rtn_clip:block_quant",
    olive=OliveMapping(refuse="Olive's Rtn pass is the nearest equivalent (no clipping search)"),
    tune=(TuneCandidate("rtnclip-asym-b32-int8head", {"symmetric": False, "block_size": 32, "lm_head": "int8"}),),
))


def _search(blocks: np.ndarray, bits: int, symmetric: bool):
    """blocks (..., block) float32 → integer codes, scales, zero points (..., 1) with the least squared error."""
    best_err = np.full(blocks.shape[:-1] + (1,), np.inf, np.float32)
    best = None
    lo0, hi0 = blocks.min(-1, keepdims=True), blocks.max(-1, keepdims=True)
    amax0 = np.maximum(np.abs(lo0), np.abs(hi0))
    signed_max = np.where(np.abs(lo0) > np.abs(hi0), lo0, hi0)  # the extreme value with its sign
    levels = (1 << bits) - 1
    half = 1 << (bits - 1)
    # symmetric: two scale families per ratio — |max|/(2^(b-1)-1), and onnxruntime's signed max/-2^(b-1), which
    # spends the extra negative level on the block's extreme value
    candidates = [(r, False) for r in RATIOS] + ([(r, True) for r in RATIOS] if symmetric else [])
    for r, signed in candidates:
        if symmetric:
            raw = r * signed_max / -half if signed else r * amax0 / (half - 1)
            scale = np.where(amax0 > 0, raw, 1.0).astype(np.float32)
            zp = np.full_like(scale, half)
        else:
            lo, hi = np.minimum(r * lo0, 0), np.maximum(r * hi0, 0)
            scale = np.where(hi > lo, (hi - lo) / levels, 1.0).astype(np.float32)
            zp = np.clip(np.round(-lo / scale), 0, levels)
        q = np.clip(np.round(blocks / scale) + zp, 0, levels)
        err = np.square((q - zp) * scale - blocks).sum(-1, keepdims=True)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best = (q, scale, zp) if best is None else tuple(np.where(better, new, old) for new, old in zip((q, scale, zp), best))
    return best


def block_quant(w: np.ndarray, bits: int, block: int, symmetric: bool):
    """(K, N) weights → MatMulNBits' packed (N, k_blocks, block*bits/8), scales (N, k_blocks), zero points
    (N, ceil(k_blocks*bits/8)): low nibble first, symmetric blocks with the implicit zero point 2^(bits-1)."""
    k, n = w.shape
    k_blocks = -(-k // block)
    w = np.pad(np.asarray(w, np.float32), ((0, k_blocks * block - k), (0, 0)))
    blocks = np.ascontiguousarray(w.T.reshape(n, k_blocks, block))
    q, scale, zp = _search(blocks, bits, symmetric)
    q, zp = q.astype(np.uint8), zp[..., 0].astype(np.uint8)
    if bits == 4:
        packed = (q[..., 0::2] | (q[..., 1::2] << 4)).astype(np.uint8)
        if k_blocks % 2:
            zp = np.pad(zp, ((0, 0), (0, 1)), constant_values=8 if symmetric else 0)
        zero_points = (zp[:, 0::2] | (zp[:, 1::2] << 4)).astype(np.uint8)
    else:
        packed, zero_points = q, zp
    return np.ascontiguousarray(packed), np.ascontiguousarray(scale[..., 0]), np.ascontiguousarray(zero_points)
