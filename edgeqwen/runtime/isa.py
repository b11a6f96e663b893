"""The CPU's SIMD level, as onnxruntime's CPU kernels see it (they choose code paths by CPUID at run time): printed
beside every benchmark figure and in the test log, since results differ between AVX2, AVX-512 and NEON machines."""

from __future__ import annotations

import platform
from pathlib import Path

# (label, CPU features that must all be present), best first; names as numpy's runtime dispatch reports them
LEVELS = (
    ("AVX-512 VNNI", ("AVX512F", "AVX512BW", "AVX512VNNI")),
    ("AVX-512", ("AVX512F", "AVX512BW")),
    ("AVX2 VNNI", ("AVX2", "AVXVNNI")),
    ("AVX2", ("AVX2", "FMA3")),
    ("NEON dotprod i8mm", ("ASIMD", "ASIMDDP", "I8MM")),
    ("NEON dotprod", ("ASIMD", "ASIMDDP")),
    ("NEON", ("ASIMD",)),
)
# /proc/cpuinfo flag names for the same features (when numpy cannot say)
PROC_FLAGS = {"AVX512F": "avx512f", "AVX512BW": "avx512bw", "AVX512VNNI": "avx512_vnni", "AVX2": "avx2",
              "AVXVNNI": "avx_vnni", "FMA3": "fma", "ASIMD": "asimd", "ASIMDDP": "asimddp", "I8MM": "i8mm"}


def _numpy_features() -> set[str] | None:
    """CPUID as numpy read it in this process (right under qemu-user, where /proc/cpuinfo shows the host)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:
        try:
            from numpy.core._multiarray_umath import __cpu_features__ as found
        except ImportError:
            return None
    return {name for name, on in found.items() if on}


def _proc_features() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((x for x in text.splitlines() if x.startswith(("flags", "Features"))), "")
    words = set(line.split(":", 1)[-1].split())
    return {name for name, flag in PROC_FLAGS.items() if flag in words}


def cpu_isa() -> str:
    """'AVX-512 VNNI', 'AVX2', 'NEON dotprod', … or 'baseline (machine)'."""
    features = _numpy_features()
    if not features:
        features = _proc_features()
    for label, needs in LEVELS:
        if set(needs) <= features:
            return label
    return f"baseline ({platform.machine()})"
