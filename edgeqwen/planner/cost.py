"""How long a build will take here, before it starts.

Each stage's floating-point work comes from the checkpoint's config and the plan (the same formulas the sensitivity
measurement budgets itself with, GPTQ's forward passes, Hessians, factorizations and updates, the evaluation's two
models over the eval windows); the time is that work over this machine's matrix-multiply rate, measured now by a
short probe, times the share of that rate each stage reaches. The shares were measured on the Qwen2.5 0.5B and 3B
shapes (benchmarks/build_bench.py); the build refines its estimate from each stage's own per-layer rate as it runs
(the ETA on every progress line).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

# share of the probe's GEMM rate each stage reaches, fitted to quiet default builds of the Qwen2.5 0.5B, 1.5B and 3B
# shapes on one machine of this kind (an AMD EPYC, probe ~211 GFLOP/s; benchmarks/results/build-qwen2.5-*.md): each
# stage within 20 % and each total within 5 % there (the streamed sensitivity measurement: 0.69 / 0.52 / 0.59 of the
# probe on the three shapes). Another CPU of this kind (a Xeon, probe ~310) ran GPTQ at 0.45 of its probe: the
# single-thread numpy probe follows torch's two-thread GEMM only roughly across CPUs.
EFFICIENCY = {"sensitivity": 0.60, "gptq": 0.68, "export": 1.0, "evaluate": 0.82}
# the builder's export at the probe's reference rate (measured 19, 27 and 33 s on 0.5B, 1.5B and 3B; 4-8 s on the
# embedded tiny models on a machine probing ~70 GFLOP/s): the worker's start (imports) ...
EXPORT_START_S = 3.0
EXPORT_FIXED_S = 12.0  # ... a part that grows to its full size by ~0.5B parameters (loading, the 152k-word tables) ...
EXPORT_S_PER_BPARAM = 6.0  # ... and seconds per billion parameters
GPTQ_START_S = 5.0  # calibration text, the torch model, per-layer set-up: 15-18 s on a tiny model at ~70 GFLOP/s
EVALUATE_START_S = 1.0  # the accuracy stage's start (torch, the reference model, the session): 3-10 s on a tiny model
REFERENCE_GFLOPS = 211.0  # the probe's rate on the machine the export constants were measured on
GPTQ_TOKEN_BUDGET_TFLOP = 70  # per-token GPTQ work allowed (forward passes + Gram matrices): 8192 tokens up to the
# 1.5B shape, 4096 on the 3B shape (whose fixed factorization work is another ~50 TFLOP)
LONG_BUILD_S = 15 * 60  # past this, the build says so up front with its faster choices


_PROBE = """
import time, numpy as np
a = np.random.default_rng(0).standard_normal((768, 768), dtype=np.float32)
a @ a
best = min(__import__("timeit").repeat(lambda: a @ a, number=1, repeat=12))
print(2 * 768 ** 3 / best / 1e9)
"""


@lru_cache(maxsize=1)
def probe_gflops() -> float:
    """fp32 matrix-multiply rate of this machine for the calibrated steps' thread count: one thread's best-of-12 rate
    on 768³ products (a fresh single-threaded numpy, ~0.3 s; a busy machine still gives its quiet-slot rate), times
    the threads. The per-layer ETA lines then follow what the build really gets."""
    import os
    import subprocess
    import sys

    from ..child import calibration_threads

    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, env=env, timeout=60)
    return float(out.stdout.strip()) * calibration_threads()


def _dims(config: dict) -> tuple[int, int, int, int, int, int, int]:
    h, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kvh = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    return h, inter, layers, heads, kvh, hd, config["vocab_size"]


def layer_params(config: dict) -> int:
    h, inter, _, heads, kvh, hd, _ = _dims(config)
    return h * (heads + 2 * kvh) * hd + heads * hd * h + 3 * h * inter


def gptq_tflop_per_token(config: dict) -> float:
    """GPTQ's work that grows with the calibration tokens: two forward passes and the Gram matrices, per token."""
    h, inter, layers, heads, _, hd, _ = _dims(config)
    return layers * (2 * 2 * layer_params(config) + sum(k * k for k in (h, heads * hd, h, inter))) / 1e12


def gptq_tflop(config: dict, tokens: int) -> float:
    """GPTQ (gptq_stream.py): per layer two forward passes, the Gram matrix of each distinct linear input (lower
    triangle), a Cholesky and a triangular inverse per distinct input, the lazy column updates of every matrix."""
    h, inter, layers, heads, kvh, hd, _ = _dims(config)
    inputs = (h, heads * hd, h, inter)  # q/k/v share one input, gate/up share one
    matrices = ((h, (heads + 2 * kvh) * hd), (heads * hd, h), (h, 2 * inter), (inter, h))  # (K, N)
    forward = 2 * 2 * layer_params(config) * tokens
    gram = sum(k * k * tokens for k in inputs)
    factor = sum(4 * k ** 3 / 3 for k in inputs)
    updates = sum(n * k * k for k, n in matrices)
    return layers * (forward + gram + factor + updates) / 1e12


def sensitivity_tflop(config: dict, samples: int, seq_len: int, budget: float) -> float:
    """The measurement's reruns (as budgeted in sensitivity.py), its reference pass, the per-layer output errors and
    the lm_head/table checks (full passes when the head is tied)."""
    from types import SimpleNamespace

    from .budget import PROXY_SHARE, choose_resolution, layer_tflop, local_error_sequences, pick_layers, rerun_costs

    cfg = SimpleNamespace(**config)
    tokens = samples * seq_len
    resolution = choose_resolution(cfg, tokens, budget)
    costs = rerun_costs(cfg, tokens)
    local = cfg.num_hidden_layers * 6 * layer_tflop(cfg, tokens)  # a layer's output with each matrix kind quantized
    if resolution == "proxy":
        reruns = sum(costs[i] for i in pick_layers(costs, budget * PROXY_SHARE))
        local *= local_error_sequences(cfg, 5, samples, seq_len, budget) / samples
    else:
        reruns = {"matrix": 5, "block": 2, "layer": 1}[resolution] * sum(costs)
    capture = costs[0]
    head_checks = 2 * costs[0] if config.get("tie_word_embeddings", True) else 4 * (costs[0] - costs[1])
    return reruns + capture + local + head_checks + costs[-1]  # + the noise floor (a rerun of the last layer)


def evaluate_tflop(config: dict, tokens: int) -> float:
    """The PyTorch fp32 reference and the artifact over the eval windows (logits at every position)."""
    h, _, layers, _, _, _, vocab = _dims(config)
    per_token = 2 * (layers * layer_params(config) + h * vocab)
    return 2 * per_token * tokens / 1e12


@dataclass(frozen=True)
class TimeEstimate:
    seconds: dict[str, float]  # stage → seconds, in build order
    gflops: float  # the probe's rate this estimate used

    @property
    def total_s(self) -> float:
        return sum(self.seconds.values())

    def line(self) -> str:
        parts = ", ".join(f"{k} {_fmt(v)}" for k, v in self.seconds.items())
        return f"time estimate on this machine ({self.gflops:.0f} GFLOP/s measured): {parts}; total {_fmt(self.total_s)}"

    def as_dict(self) -> dict:
        return {"seconds": {k: round(v, 1) for k, v in self.seconds.items()}, "total_s": round(self.total_s, 1),
                "probe_gflops": round(self.gflops, 1)}


def _fmt(seconds: float) -> str:
    return f"~{seconds:.0f} s" if seconds < 90 else f"~{seconds / 60:.0f} min"


def estimate(plan, resolved, config: dict, evaluate: bool = True, gflops: float | None = None) -> TimeEstimate:
    """Seconds per stage of building `plan` on this machine."""
    from ..quantize.registry import get_algorithm
    from .budget import BUDGET_TFLOP

    rate = (gflops or probe_gflops()) * 1e9 / 1e12  # TFLOP per second
    scale = REFERENCE_GFLOPS / (rate * 1e3)  # the fixed parts (starts, loading) run slower on a slower machine too
    recipe = resolved.recipe
    out: dict[str, float] = {}
    if plan.needs_sensitivity:
        mp = recipe.quantization.mixed_precision
        out["sensitivity"] = sensitivity_tflop(config, mp.samples, mp.seq_len, BUDGET_TFLOP) / (rate * EFFICIENCY["sensitivity"])
    spec = get_algorithm(plan.algorithm) if plan.quantized else None
    if spec is not None and spec.name == "gptq":
        cal = recipe.quantization.calibration
        samples = plan.calibration_samples or cal.samples
        out["gptq"] = (gptq_tflop(config, samples * cal.seq_len) / (rate * EFFICIENCY["gptq"])
                       + GPTQ_START_S * scale)
    params = config["num_hidden_layers"] * layer_params(config) + config["hidden_size"] * config["vocab_size"]
    out["export"] = (EXPORT_START_S + EXPORT_FIXED_S * min(1.0, params / 0.5e9)
                     + EXPORT_S_PER_BPARAM * params / 1e9) * scale
    if evaluate:
        gate = recipe.accuracy
        out["evaluate"] = (evaluate_tflop(config, gate.window * gate.max_windows) / (rate * EFFICIENCY["evaluate"])
                           + EVALUATE_START_S * scale)
    return TimeEstimate(out, rate * 1e3)


# what the faster choices cost in accuracy, measured on the trained models (benchmarks/results/holdout-quality.md:
# mean KLD of the default int4 recipe vs its fast variant and vs --low-memory RTN, tiny-qwen2 / tiny-qwen3)
FASTER_CHOICES = ("the recipe's fast variant (-fast-int4: RTN, no measurement or calibration; about 4x the KLD on the "
                  "trained test models: 0.061 vs 0.017, 0.076 vs 0.019)",
                  "--low-memory (RTN in place, minutes; the same RTN accuracy cost)")


def long_build_advice(est: TimeEstimate) -> str | None:
    """The line a build past LONG_BUILD_S prints before it starts."""
    if est.total_s <= LONG_BUILD_S:
        return None
    slow = max(est.seconds, key=est.seconds.get)
    return (f"this build will take {_fmt(est.total_s)} here (most of it {slow}); faster: "
            + "; ".join(FASTER_CHOICES))
