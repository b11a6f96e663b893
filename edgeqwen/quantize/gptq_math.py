"""GPTQ's arithmetic on one weight matrix (Frantar et al. 2022, the reference implementation's lazy-batch form), with
Olive's unsigned group quantizer so the result is stored as Olive's format (`quant_method: olive`), which
onnxruntime-genai's builder reads into MatMulNBits.

Only torch; no model, no files. gptq_stream.py runs it one decoder layer at a time.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class GroupFormat:
    bits: int
    group_size: int
    symmetric: bool

    @property
    def maxq(self) -> int:
        return 2 ** self.bits - 1


def find_qparams(w: torch.Tensor, fmt: GroupFormat) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row of `w` [N, g]: (scale [N], zero point [N] int). Asymmetric: Olive's WeightQuantizer (unsigned levels
    0..maxq over a range always holding 0). Symmetric: onnxruntime's own block quantizer's (MLAS) — zero point at
    the middle level m = 2^(bits-1) and scale = the row's largest-magnitude weight / -m, signed, so that weight lands
    exactly on level 0 and all 2^bits levels are used (Olive's symmetric scale, 2·max|w| / maxq, leaves half a level
    unused at each end: on a 256-wide matrix its GPTQ loss is 1.19x this one's, tests/test_quantize.py)."""
    if fmt.symmetric:
        mid = (fmt.maxq + 1) // 2
        extreme = w.gather(1, w.abs().argmax(1, keepdim=True)).squeeze(1)
        scale = torch.where(extreme == 0, 1.0, extreme / -mid)
        return scale, torch.full_like(scale, mid, dtype=torch.int32)
    zero = torch.zeros(w.shape[0], dtype=w.dtype)
    lo, hi = torch.minimum(w.min(1).values, zero), torch.maximum(w.max(1).values, zero)
    empty = (lo == 0) & (hi == 0)
    lo, hi = torch.where(empty, -1.0, lo), torch.where(empty, 1.0, hi)
    scale = (hi - lo) / fmt.maxq
    zp = torch.round(-lo / scale)
    return scale, zp.clamp(0, fmt.maxq).to(torch.int32)


def quantize_column(w: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor, maxq: int) -> torch.Tensor:
    """Integer levels of one column [N]."""
    return torch.round(w / scale + zp).clamp(0, maxq)


def inverse_hessian_factor(h: torch.Tensor, damp_percent: float) -> torch.Tensor:
    """Upper-triangular U with (H + λI)⁻¹ = UᵀU (what GPTQ's column updates read), from ONE Cholesky and one triangular
    inverse: with J the exchange matrix and J·H·J = L·Lᵀ, U = J·L⁻¹·J. (The reference implementation computes
    cholesky → cholesky_inverse → cholesky: 23 s against 4 s here for a 4864-wide down_proj, the same U to 4e-7.)"""
    h = h.clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1
    h.diagonal().add_(damp_percent * torch.mean(torch.diag(h)))
    return lower_inverse(torch.linalg.cholesky(h.flip(0, 1))).flip(0, 1)


def lower_inverse(lower: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """L⁻¹ of a lower-triangular L, one block of columns at a time: the rows above a block are zero, so each block
    solves only the trailing system (a third of the work of one solve against the whole identity)."""
    n = lower.shape[0]
    out = torch.zeros(n, n, dtype=lower.dtype)
    for j in range(0, n, block):
        b = min(block, n - j)
        rhs = torch.zeros(n - j, b, dtype=lower.dtype)
        rhs[:b].fill_diagonal_(1)
        out[j:, j:j + b] = torch.linalg.solve_triangular(lower[j:, j:], rhs, upper=False)
    return out


class GramAccumulator:
    """Σ xᵀx over batches of rows x [T, K], computing only the lower block triangle (block columns of `block` wide):
    about half the multiply-adds of x.T @ x for a wide input (the 11008-wide down_proj input of a 3B model)."""

    def __init__(self, k: int, block: int = 512):
        self.k, self.block = k, block
        self.cols = [torch.zeros(k - a, min(block, k - a)) for a in range(0, k, block)]

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, self.k).float()
        for j, a in enumerate(range(0, self.k, self.block)):
            self.cols[j].addmm_(x[:, a:].t(), x[:, a:a + self.block])

    def value(self) -> torch.Tensor:
        h = torch.empty(self.k, self.k)
        for j, a in enumerate(range(0, self.k, self.block)):  # a diagonal block is whole (and symmetric) in cols[j]
            h[a:, a:a + self.block] = self.cols[j]
            h[a:a + self.block, a:] = self.cols[j].t()
        return h


@dataclass
class QuantizedMatrix:
    q: torch.Tensor  # [N, K] int levels (uint8 values)
    scales: torch.Tensor  # [N, K / group] float32
    zeros: torch.Tensor  # [N, K / group] int32
    loss: float  # GPTQ's objective Σ (w − q)² / d², halved (the reference implementation's "error")

    def dequantize(self, group_size: int) -> torch.Tensor:
        s = self.scales.repeat_interleave(group_size, dim=1)
        z = self.zeros.repeat_interleave(group_size, dim=1)
        return (self.q - z) * s


def gptq(weight: torch.Tensor, h: torch.Tensor, fmt: GroupFormat, damp_percent: float = 0.01, block: int = 128,
         hinv: torch.Tensor | None = None) -> QuantizedMatrix:
    """GPTQ of weight [N, K] (fp32) against the Hessian h [K, K] of its inputs, group-wise along K, no act-order.
    `hinv`: inverse_hessian_factor(h, damp_percent) when the caller already has it (matrices sharing an input)."""
    n, k = weight.shape
    if k % fmt.group_size:
        raise ValueError(f"in_features {k} is not a multiple of group_size {fmt.group_size}")
    wt = weight.detach().float().t().contiguous()  # [K, N]: column j of W is row j here, contiguous
    wt[torch.diag(h) == 0] = 0
    if hinv is None:
        hinv = inverse_hessian_factor(h.float(), damp_percent)
    qt = torch.zeros(k, n)
    groups = k // fmt.group_size
    scales = torch.zeros(groups, n)
    zeros = torch.zeros(groups, n, dtype=torch.int32)
    loss = 0.0
    threads = torch.get_num_threads()
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = wt[i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        torch.set_num_threads(1)  # vector-sized steps: thread hand-offs cost more than they save
        try:
            _columns(w1, err1, h1, qt, scales, zeros, i1, fmt, wt)
        finally:
            torch.set_num_threads(threads)
        loss += float((err1 * err1).sum()) / 2
        wt[i2:].addmm_(hinv[i1:i2, i2:].t(), err1, alpha=-1)
    return QuantizedMatrix(qt.t().to(torch.uint8).contiguous(), scales.t().contiguous(), zeros.t().contiguous(), loss)


def _columns(w1, err1, h1, qt, scales, zeros, i1: int, fmt: GroupFormat, wt) -> None:
    """One lazy block's columns, in order: quantize, record the scaled error, push it onto the block's later columns."""
    for i in range(w1.shape[0]):
        col = i1 + i
        g = col // fmt.group_size
        if col % fmt.group_size == 0:
            # as the reference implementation (and Olive's pass): the range from W as the last block update left it
            scales[g], zeros[g] = find_qparams(wt[col:col + fmt.group_size].t(), fmt)
        scale, zp = scales[g], zeros[g]
        levels = quantize_column(w1[i], scale, zp, fmt.maxq)
        qt[col] = levels
        e = (w1[i] - (levels - zp) * scale) / h1[i, i]
        w1[i:].addr_(h1[i, i:], e, alpha=-1)
        err1[i] = e


def pack_uint8(levels: torch.Tensor, bits: int) -> torch.Tensor:
    """[R, C] levels → [R, ceil(C / (8 / bits))] uint8, the first value in the lowest bits (Olive's / auto-gptq's
    layout, MatMulNBits' blob order)."""
    per = 8 // bits
    pad = (-levels.shape[1]) % per
    x = torch.nn.functional.pad(levels.to(torch.int32), (0, pad)).reshape(levels.shape[0], -1, per)
    out = torch.zeros(x.shape[:2], dtype=torch.int32)
    for j in range(per):
        out |= x[:, :, j] << (bits * j)
    return out.to(torch.uint8)
