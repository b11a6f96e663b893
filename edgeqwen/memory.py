"""Resident-memory estimate of an artifact at its context, before anything is built.

weights (per MatMul: packed values + per-block scales/zero points, or float) + the KV cache
preallocated at the full context (as the runner and onnxruntime-genai do) + prefill activations and
logits + the runtime's own baseline. `edgeqwen plan` prints it; `edgeqwen build` refuses a recipe
whose estimate exceeds its target's memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import EdgeQwenError
from .recipe import EmbeddingMode, HeadMode, Resolved
from .targets import ExecutionProvider, Precision

RUNTIME_BASELINE_MB = 70.0  # python + onnxruntime + numpy + tokenizers: the runner's peak RSS on a 1 MB artifact
# onnxruntime's CPU provider keeps the loaded initializers and adds prepacked copies for its MatMul
# kernels; measured on the Qwen2.5-0.5B-shaped int4 artifact (395 MB file → ~578 MB resident).
CPU_WEIGHT_RESIDENCY = 1.45
PREFILL_TOKENS = 128  # activations/logits sized for a prompt chunk of this many tokens


@dataclass(frozen=True)
class MemoryEstimate:
    weights_mb: float
    kv_cache_mb: float
    activations_mb: float
    baseline_mb: float
    context: int
    budget_mb: int

    @property
    def total_mb(self) -> float:
        return self.weights_mb + self.kv_cache_mb + self.activations_mb + self.baseline_mb

    def as_dict(self) -> dict:
        return {"weights": round(self.weights_mb, 1), "kv_cache": round(self.kv_cache_mb, 1),
                "activations": round(self.activations_mb, 1), "baseline": self.baseline_mb,
                "total": round(self.total_mb, 1), "context": self.context, "budget": self.budget_mb}

    def table(self) -> str:
        rows = [("weights (resident, with prepacked copies)", self.weights_mb), (f"KV cache at {self.context} tokens", self.kv_cache_mb),
                (f"activations + logits ({PREFILL_TOKENS}-token prefill)", self.activations_mb),
                ("runtime baseline", self.baseline_mb), ("total", self.total_mb)]
        w = max(len(r[0]) for r in rows)
        lines = [f"  {k:<{w}}  {v:9.1f} MB" for k, v in rows]
        verdict = "fits" if self.total_mb <= self.budget_mb else "DOES NOT FIT"
        lines.append(f"  {'target budget':<{w}}  {self.budget_mb:9.1f} MB  → {verdict}")
        return "\n".join(lines)


def _matrix_bytes(k: int, n: int, bits: int, block: int, asym: bool, scale_bytes: int) -> float:
    if bits >= 16:
        return k * n * bits / 8
    blocks = -(-k // block)
    packed = blocks * block * n * bits / 8
    scales = blocks * n * scale_bytes
    zero_points = blocks * n * bits / 8 if asym else 0
    return packed + scales + zero_points


def estimate(resolved: Resolved, config: dict) -> MemoryEstimate:
    recipe, target = resolved.recipe, resolved.target
    q = recipe.quantization
    h = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kvh = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    tied = bool(config.get("tie_word_embeddings", False))
    fp32_io = target.execution_provider in (ExecutionProvider.CPU, ExecutionProvider.QNN)  # QNN graphs here: fp32 I/O
    io_bytes = 2 if not fp32_io or recipe.precision == Precision.FP16 else 4
    bits = {Precision.INT4: 4, Precision.INT8: 8, Precision.FP16: 16, Precision.FP32: 32}[recipe.precision]
    quantized = bits <= 8
    asym = quantized and not q.symmetric
    block = resolved.block_size

    def mat(k, n, b=bits):
        return _matrix_bytes(k, n, b, block, asym and b == 4, io_bytes)

    per_layer = (mat(h, heads * hd) + 2 * mat(h, kvh * hd) + mat(heads * hd, h) + 2 * mat(h, inter) + mat(inter, h))
    float_bits = io_bytes * 8
    head_bits = bits
    if quantized and (q.lm_head == HeadMode.INT8 or recipe.precision == Precision.INT8):
        head_bits = 8
    if quantized and q.lm_head == HeadMode.FLOAT:
        head_bits = float_bits
    lm_head = mat(h, vocab, head_bits)
    if quantized and tied and q.embeddings == EmbeddingMode.INT8 and q.lm_head == HeadMode.SAME:
        lm_head = mat(h, vocab, 8)  # the shared table is int8
    shared = (tied and quantized and q.embeddings != EmbeddingMode.FLOAT and q.lm_head != HeadMode.FLOAT
              and recipe.exporter.value == "builder")  # the portable graph keeps lm_head and the table apart
    if shared or (tied and not quantized):
        embed = 0.0  # one table serves both
    elif quantized and q.embeddings != EmbeddingMode.FLOAT:
        embed = mat(h, vocab, 8 if q.embeddings == EmbeddingMode.INT8 or recipe.precision == Precision.INT8 else 4)
    else:
        embed = vocab * h * io_bytes
    weights = layers * per_layer + lm_head + embed
    if target.execution_provider == ExecutionProvider.CPU:
        weights *= CPU_WEIGHT_RESIDENCY
    ctx = min(recipe.context_length, config.get("max_position_embeddings") or recipe.context_length)
    kv = 2 * layers * kvh * hd * ctx * io_bytes
    acts = PREFILL_TOKENS * vocab * 4 + PREFILL_TOKENS * (4 * h + 3 * inter) * 4 * 2
    mb = 1024 * 1024
    return MemoryEstimate(weights / mb, kv / mb, acts / mb, RUNTIME_BASELINE_MB, ctx, target.memory_budget_mb)


def check_fits(resolved: Resolved, config: dict, where: str) -> MemoryEstimate:
    est = estimate(resolved, config)
    if est.total_mb > est.budget_mb:
        raise EdgeQwenError(
            f"recipe {resolved.recipe.name} does not fit target {resolved.target.name}: estimated "
            f"{est.total_mb:.0f} MB resident > budget {est.budget_mb} MB\n{est.table()}",
            where=where,
            hint="lower context_length (the KV cache is preallocated at it), use int4 / quantized embeddings, "
            "or pick a smaller model or a target with more memory",
        )
    return est
