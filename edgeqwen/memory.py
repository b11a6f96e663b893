"""Resident-memory estimate of an artifact at its context, before anything is built.

weights (per MatMul: packed values + per-block scales/zero points, or float) + the KV cache
at the full context (the worst case: onnxruntime-genai preallocates it, the runner grows it to what a request needs) + prefill activations and
logits + the runtime's own baseline. `edgeqwen plan` prints it; `edgeqwen build` refuses a recipe
whose estimate exceeds its target's memory budget.
"""

from __future__ import annotations

from dataclasses import dataclass

from .architectures import HEAD_NODE, get_architecture
from .errors import DoesNotFit
from .planner import ExportPlan, TableMode
from .planner.sizes import matrix_bytes
from .quantize.registry import get_algorithm
from .quantize.request import Scheme
from .recipe import Resolved
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


def estimate(plan: ExportPlan, resolved: Resolved, config: dict) -> MemoryEstimate:
    """Resident memory of the planned artifact: every MatMul at the plan's own bits/block/zero points (the same
    per-node settings the exporter writes), the planned lm_head and embedding table, the KV cache at context."""
    target = resolved.target
    h = config["hidden_size"]
    layers = config["num_hidden_layers"]
    heads = config["num_attention_heads"]
    kvh = config.get("num_key_value_heads") or heads
    hd = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    vocab = config["vocab_size"]
    fp32_io = target.fp32_graph
    io_bytes = 2 if not fp32_io or plan.precision == Precision.FP16 else 4
    float_bytes = {Precision.FP32: 4, Precision.FP16: 2}.get(plan.precision, io_bytes)
    spec = get_algorithm(plan.algorithm) if plan.quantized else None
    zp_bytes = io_bytes if spec is not None and spec.float_zero_points else None
    weights = 0.0
    for node, (k, n) in get_architecture(plan.architecture).linear_shapes(config, plan.exporter.value).items():
        if not plan.quantized or node in plan.exclude_nodes:
            weights += k * n * float_bytes
            continue
        s = plan.node_setting(node)
        weights += matrix_bytes(k, n, s.bits, s.group_size, s.scheme == Scheme.ASYM, io_bytes,
                                 None if node == HEAD_NODE else zp_bytes, float_bytes)
    if plan.head.shortlist:  # decoding's shortlist head: a ranking copy of the head (export/shortlist_head.py; 2-bit
        bits = plan.head.shortlist_bits  # with zero points, 4-bit symmetric)
        weights += matrix_bytes(h, vocab, bits, plan.head.block_size, bits == 2, io_bytes, None, float_bytes)
    table = plan.table
    tied = bool(config.get("tie_word_embeddings", False))
    if table.mode == TableMode.SEPARATE:
        weights += matrix_bytes(h, vocab, table.bits, table.block_size, not plan.symmetric, io_bytes, None, float_bytes)
    elif table.mode == TableMode.FLOAT and not (tied and not plan.quantized):
        weights += vocab * h * float_bytes  # a float table beside a quantized head (a tied float model shares one)
    elif table.mode == TableMode.ROWS:  # Qwen2.5-VL: embedding.onnx's int8 rows + one float scale each
        weights += vocab * (h + 4)
    vision_acts = 0.0
    if plan.vision:
        vision_weights, vision_acts = _vision(plan, config, float_bytes)
        weights += vision_weights
    if target.execution_provider == ExecutionProvider.CPU:
        weights *= CPU_WEIGHT_RESIDENCY
    ctx = plan.context_length
    kv = 2 * layers * kvh * hd * ctx * (2 if plan.kv_fp16 else io_bytes)
    acts = max(PREFILL_TOKENS * vocab * 4 + PREFILL_TOKENS * (4 * h + 3 * inter) * 4 * 2, vision_acts)
    mb = 1024 * 1024
    return MemoryEstimate(weights / mb, kv / mb, acts / mb, RUNTIME_BASELINE_MB, ctx, target.memory_budget_mb)


def _vision(plan: ExportPlan, config: dict, float_bytes: int) -> tuple[float, float]:
    """Qwen2.5-VL's encoder: its weights at the plan's bits, and the peak activations of one largest image (the
    attention scores of every head over every patch pair, float32, plus a few [patches, hidden] tensors)."""
    v = config["vision_config"]
    vh, inter, heads = v["hidden_size"], v["intermediate_size"], v["num_heads"]
    bits = plan.vision.bits
    weights = sum(matrix_bytes(k, n, bits, plan.vision.block, False, 4, None, float_bytes) if bits else k * n * float_bytes
                  for k, n in vision_linears(v))
    weights += vision_patch_embed(v) * 4  # the float patch embedding
    patches = plan.vision.max_pixels // v["patch_size"] ** 2
    acts = heads * patches * patches * 4 * 2 + patches * (4 * vh + inter) * 4 * 2
    return weights, acts


def vision_linears(v: dict) -> list[tuple[int, int]]:
    """(K, N) of every linear of a Qwen2.5-VL vision tower (its config's vision_config)."""
    vh, inter = v["hidden_size"], v["intermediate_size"]
    merged = vh * v["spatial_merge_size"] ** 2
    block = [(vh, 3 * vh), (vh, vh), (vh, inter), (vh, inter), (inter, vh)]
    return block * v["depth"] + [(merged, merged), (merged, v["out_hidden_size"])]


def vision_patch_embed(v: dict) -> int:
    return 3 * v["temporal_patch_size"] * v["patch_size"] ** 2 * v["hidden_size"]


def check_fits(plan: ExportPlan, resolved: Resolved, config: dict, where: str) -> MemoryEstimate:
    est = estimate(plan, resolved, config)
    if est.total_mb > est.budget_mb:
        raise DoesNotFit(
            f"recipe {resolved.recipe.name} does not fit target {resolved.target.name}: estimated "
            f"{est.total_mb:.0f} MB resident > budget {est.budget_mb} MB\n{est.table()}",
            where=where,
            hint="lower context_length (the KV cache is preallocated at it), use int4 / quantized embeddings, "
            "or pick a smaller model or a target with more memory",
        )
    return est


# Exporter peak RSS per byte of fp32 weights, measured on this machine kind (benchmarks/README.md): the builder's own
# quantizer serializes a second full copy (Qwen2.5-0.5B int4: 6.7 GB; 1.5B: 17.3 GB ≈ 3.4× the fp32 weights);
# the low-memory path holds the loaded model plus what is already quantized (0.5B: 3.3 GB ≈ 1.7×; a bf16 3B
# checkpoint kept in bf16: 8.1 GB ≈ 1.3× its own bytes).
BUILD_PEAK_PER_FP32_BYTE = {"normal": 3.5, "low_memory": 1.7}


def parameter_count(config: dict) -> int:
    from .architectures import architecture_of

    linears = sum(k * n for k, n in architecture_of(config).linear_shapes(config, "builder").values())
    embed = 0 if config.get("tie_word_embeddings") else config["vocab_size"] * config["hidden_size"]
    vision = config.get("vision_config")  # Qwen2.5-VL: the exporters load the vision tower too
    if isinstance(vision, dict):
        linears += sum(k * n for k, n in vision_linears(vision)) + vision_patch_embed(vision)
    return linears + embed


def build_peak_mb(config: dict, low_memory: bool) -> float:
    fp32 = parameter_count(config) * 4
    if low_memory and str(config.get("torch_dtype") or config.get("dtype")) in ("bfloat16", "float16"):
        return 1.3 * fp32 / 2 / 2**20  # kept in its own 16-bit dtype
    return BUILD_PEAK_PER_FP32_BYTE["low_memory" if low_memory else "normal"] * fp32 / 2**20


EVAL_BASE_MB = 500.0  # torch, onnxruntime and the tokenizer beside the reference in the accuracy stage's process


def evaluate_peak_mb(config: dict, window: int, windows: int, low_memory: bool = False, graphs: int = 1) -> float:
    """The accuracy stage's peak (evaluate/core.py): the fp32 PyTorch reference (the artifact is closed first), the
    artifact's scored logits kept per window (half a window each), one window's reference logits and their
    log-softmax arithmetic. Measured on the Qwen2.5-3B shape: 15168 MB against 14939 MB estimated. Low-memory (a
    bf16/fp16 checkpoint kept in its dtype, one decoder layer at a time in fp32): the layers at 2 bytes a weight, the
    embedding table and head at 4, one layer's fp32 copy (3B shape: 8935 MB measured, 9689 MB estimated). `graphs`:
    the decoder graphs scored (a web artifact's WebAssembly graph is a second), each one's logits kept."""
    logits = window * config["vocab_size"] * 4 / 2**20  # one window's full-vocabulary fp32 rows
    params = parameter_count(config)
    weights = params * 4
    if low_memory and str(config.get("torch_dtype") or config.get("dtype")) in ("bfloat16", "float16"):
        table = config["vocab_size"] * config["hidden_size"] * (1 if config.get("tie_word_embeddings") else 2)
        layer = (params - table) / config["num_hidden_layers"]
        weights = (params - table) * 2 + table * 4 + layer * 4
    return 1.05 * weights / 2**20 + logits * (graphs * windows / 2 + 3) + EVAL_BASE_MB


def evaluate_peaks_mb(config: dict, window: int, windows: int, graphs: int = 1) -> tuple[float, float]:
    """The accuracy stage's peak with the fp32 reference and with the low-memory one (equal for an fp32 checkpoint)."""
    return tuple(evaluate_peak_mb(config, window, windows, low_memory=low, graphs=graphs) for low in (False, True))


def proc_kb_as_mb(path: str, key: str) -> float | None:
    """A "Key:  123 kB" line of a Linux /proc file, in MB (None where there is no such file or line)."""
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def available_mb() -> float:
    """MemAvailable from /proc/meminfo (Linux); elsewhere psutil if present; else unknown (inf)."""
    have = proc_kb_as_mb("/proc/meminfo", "MemAvailable")
    if have is not None:
        return have
    try:
        import psutil

        return psutil.virtual_memory().available / 2**20
    except ImportError:
        return float("inf")
