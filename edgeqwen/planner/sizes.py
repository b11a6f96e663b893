"""Bytes of one block-quantized matrix as MatMulNBits / GatherBlockQuantized store it (shared by the memory estimate
and the mixed-precision planner)."""

from __future__ import annotations


def matrix_bytes(k: int, n: int, bits: int | None, block: int, asym: bool, scale_bytes: int, zp_bytes: float | None,
                 float_bytes: int) -> float:
    """K×N weights: packed values (K padded to whole blocks), one scale per block and column, zero points when
    asymmetric (`bits` wide, or `zp_bytes` each when stored as floats); float weights when `bits` is None."""
    if bits is None:
        return k * n * float_bytes
    blocks = -(-k // block)
    packed = blocks * block * n * bits / 8
    scales = blocks * n * scale_bytes
    zero_points = blocks * n * (zp_bytes if zp_bytes is not None else bits / 8) if asym else 0
    return packed + scales + zero_points


def fit_block(k: int, block: int, whole_groups: bool) -> int | None:
    """The block a K-long matrix gets: `block` itself, or — for quantizers that need whole groups (GPTQ) — the largest
    of 256…16 not above it that divides K (None when none does)."""
    if not whole_groups or k % block == 0:
        return block
    return next((b for b in (256, 128, 64, 32, 16) if b <= block and k % b == 0), None)
