"""On a machine with an NVIDIA GPU and onnxruntime-gpu: run a `cuda` artifact on the CUDA execution provider
and compare its logits with the CPU artifact of the same model (and with its own CPU-provider run).

    pip install onnxruntime-gpu==1.32.0   # instead of onnxruntime, in a separate venv
    python benchmarks/cuda_check.py CUDA_ARTIFACT CPU_ARTIFACT

Prints max |Δlogit|, top-1 agreement and mean KLD of CUDA vs CPU-provider runs of the same graph and vs
the CPU artifact. Exit code 1 if top-1 agreement with the CPU artifact is below 0.9.
"""

from __future__ import annotations

import sys

import numpy as np
import onnxruntime as ort

from edgeqwen.evaluate import metrics
from edgeqwen.runtime import Runner


def main(argv) -> int:
    cuda_art, cpu_art = argv[:2]
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        print("CUDAExecutionProvider is not available: install onnxruntime-gpu on a machine with a GPU", file=sys.stderr)
        return 2
    gpu = Runner(cuda_art, providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
    same_graph_cpu = Runner(cuda_art)
    cpu = Runner(cpu_art)
    ids = gpu.encode("The assert statement is a convenient way to insert debugging assertions into a program. " * 4)
    lg, lc, lref = gpu.score(ids), same_graph_cpu.score(ids), cpu.score(ids)
    for name, other in (("same graph on CPU provider", lc), ("CPU artifact", lref)):
        print(f"CUDA vs {name}: max |Δlogit| {np.abs(lg - other).max():.4f}, top-1 {metrics.top1_agreement(other, lg):.3f}, "
              f"mean KLD {metrics.token_kld(other, lg).mean():.5f}")
    return 0 if metrics.top1_agreement(lref, lg) >= 0.9 else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
