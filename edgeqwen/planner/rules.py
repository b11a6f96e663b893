"""`plan(resolved, checkpoint) -> ExportPlan`: every decision of a build, made once, from the recipe, its target,
the algorithm's registry spec and the checkpoint's config. No file is read or written here."""

from __future__ import annotations

from ..architectures import HEAD_NODE, get_architecture
from ..checkpoint import Checkpoint
from ..errors import EdgeQwenError
from ..quantize.registry import AlgorithmSpec, get_algorithm
from ..quantize.request import NodeSetting
from ..recipe import EmbeddingMode, Exporter, HeadMode, Resolved, ZeroPoints
from ..schema import from_dict
from ..targets import ArtifactFormat, ExecutionProvider, KvCache, Precision, WeightEncoding
from .overrides import expand_overrides
from .plan import Decision, ExportPlan, HeadPlan, MixedPlan, TableMode, TablePlan, VisionPlan
from .sizes import fit_block, matrix_bytes

BLOCK_SIZES = (256, 128, 64, 32, 16)
HEAD_BLOCK = 128  # block size of an int8 lm_head in int4 CPU recipes (benchmarks/README.md)


class _Log:
    def __init__(self):
        self.items: list[Decision] = []

    def __call__(self, code: str, message: str) -> None:
        self.items.append(Decision(code, message))


def plan(resolved: Resolved, ckpt: Checkpoint, low_memory: bool = False, sensitivity: dict | None = None) -> ExportPlan:
    """`sensitivity`: the measured record `mixed_precision: auto` plans from (planner/sensitivity.py); without it an
    auto recipe is planned at its base format and the plan says a measurement is pending."""
    recipe, target, q = resolved.recipe, resolved.target, resolved.recipe.quantization
    try:
        arch = get_architecture(ckpt.architecture)
    except KeyError as exc:
        raise EdgeQwenError(str(exc.args[0]), where=str(ckpt.path / "config.json")) from None
    spec = get_algorithm(q.algorithm)
    _check_exporter(resolved, ckpt, spec, low_memory)
    vision = _vision(resolved, ckpt, arch, spec) if arch.vision else None
    cfg = ckpt.config
    layers = cfg["num_hidden_layers"]
    log = _Log()
    context, kv_fp16 = _context_and_cache(resolved, cfg, log)
    common = dict(recipe=recipe.name, architecture=ckpt.architecture, exporter=recipe.exporter,
                  precision=recipe.precision, execution_provider=target.execution_provider,
                  graph_ep=target.graph_ep, shader_f16=target.shader_f16,
                  accuracy_level=resolved.accuracy_level, weight_encoding=target.weight_encoding,
                  static_shapes=target.static_shapes, num_layers=layers, kv_in_place=target.kv_in_place,
                  kv_fp16=kv_fp16, web_max_file_mb=target.web_max_file_mb, context_length=context, vision=vision)
    if recipe.precision not in (Precision.INT4, Precision.INT8):
        return ExportPlan(algorithm="none", matmul_bits=None, block_size=resolved.block_size, symmetric=q.symmetric,
                          head=HeadPlan(None, resolved.block_size), table=TablePlan(TableMode.FLOAT),
                          decisions=tuple(log.items), **common)
    _runtime_decisions(target, log)
    if target.shader_f16 is not None:
        log("webgpu.shader_f16", "WebGPU adapters with shader-f16 only: fp16 activations and KV (on an adapter without "
            "it the first step fails; target webgpu-fp32 runs on every adapter)" if target.shader_f16 else
            "every WebGPU adapter, shader-f16 or not: fp32 activations and KV (the CPU graph layout), int4 weights")
    bits = 8 if recipe.precision == Precision.INT8 else 4
    shapes = arch.linear_shapes(cfg, recipe.exporter.value)
    block = resolved.block_size
    table_block, want_table = _fit_block_to_table(block, cfg["hidden_size"], q.embeddings != EmbeddingMode.FLOAT, log)
    if vision:  # the table lives in embedding.onnx (int8 rows, see _vision); the decoder's head is on its own
        want_table = False
        log("vision.encoder", f"vision encoder {'int%d' % vision.bits if vision.bits else 'float'} (block "
            f"{vision.block}, symmetric RTN, patch embedding float); embedding table int8 per row in embedding.onnx; "
            f"images capped at {vision.max_pixels} pixels")
    spec, fitted = _algorithm_that_runs(spec, shapes, block, low_memory, log)
    head_bits = _head_bits(resolved, spec, bits, ckpt.tied_embeddings and want_table, log)
    symmetric, zero_point_cost = _symmetry(resolved, spec, log)
    auto, mixed, auto_table_bits = _auto_mixed(resolved, ckpt, spec, bits, block, symmetric, head_bits, want_table
                                               and not ckpt.tied_embeddings, sensitivity, log, zero_point_cost)
    settings, head_bits, head_block = _node_settings(resolved, spec, shapes, layers, bits, block, head_bits,
                                                     {**fitted, **auto}, log)
    if head_bits is not None and want_table and ckpt.tied_embeddings and cfg["hidden_size"] % head_block:
        log("head.table_fit", f"lm_head block {head_block} -> {table_block}: the tied embedding table it shares needs "
            f"hidden_size {cfg['hidden_size']} to be whole blocks")
        head_block = table_block
    default = {"bits": bits, "group_size": block, "scheme": "sym" if symmetric else "asym"}
    _odd_block_fallback(spec, shapes, settings, default, head_bits, head_block, low_memory, recipe.exporter.value, log)
    table = TablePlan(TableMode.ROWS, 8) if vision else _table(
        ckpt.tied_embeddings, want_table, head_bits, head_block, table_block,
        8 if bits == 8 or q.embeddings == EmbeddingMode.INT8 else auto_table_bits or 4,
        recipe.exporter == Exporter.PORTABLE, log)
    if low_memory:
        log("low_memory", "low-memory export: each MatMul is block-quantized in place (edgeqwen's block quantizer) and "
            "its float weight dropped")
    samples = _calibration_samples(recipe, spec, cfg, log)
    prune = recipe.exporter == Exporter.BUILDER and target.graph_ep == "cpu" and head_bits is not None
    if prune and target.artifact_format == ArtifactFormat.ORT:
        prune = False
        log("head.prune", "lm_head over every position (not pruned): an ORT-format artifact keeps its weights inside "
            "model.ort, where a separate scoring head cannot share them; decode is unaffected, prefill computes the "
            "head on every prompt position")
    elif prune:
        log("head.prune", "prefill computes the lm_head for the last position only (the builder's prune_lm_head); "
            "accuracy checks score every position through lm_head.onnx, the head alone over the same stored weights")
    shortlist, ranking = _shortlist(resolved, prune and head_bits == 8 and not vision, shapes, settings, bits, head_block,
                                    log)
    return ExportPlan(prune_head=prune, algorithm=spec.name, matmul_bits=bits, block_size=block, symmetric=symmetric,
                      head=HeadPlan(head_bits, head_block, shortlist, ranking), table=table,
                      node_settings={n: NodeSetting.from_entry(v) for n, v in settings.items()},
                      exclude_nodes=(HEAD_NODE,) if head_bits is None else (), low_memory=low_memory,
                      calibration_samples=samples, mixed=mixed, decisions=tuple(log.items), **common)


SHORTLIST_MIN_HEAD_SHARE = 0.2  # a target's default shortlist: where the int8 head is this share of a token's bytes
SHORTLIST_MIN_HEAD_MB = 32  # ... and larger than a CPU's caches (a head read from cache each token costs little)


def _shortlist(resolved: Resolved, fits: bool, shapes: dict, settings: dict, bits: int, block: int,
               log: _Log) -> tuple[int, int]:
    """Decoding's lm_head as a shortlist of K candidates (export/shortlist_head.py) and the bits of its ranking copy:
    the recipe's quantization.lm_head_shortlist(_bits), or the target's default where the int8 head is larger than a
    CPU's caches and at least SHORTLIST_MIN_HEAD_SHARE of the weight bytes a decoded token reads (a 4-bit copy then
    saves at least half that share, a 2-bit one three quarters, for that much of the head's bytes more in the file).
    `fits`: a pruned int8 head on the CPU graph (what the shortlist is built from). (0, 0): the full head."""
    quant, target = resolved.recipe.quantization, resolved.target
    asked = quant.lm_head_shortlist
    k = target.lm_head_shortlist if asked is None else asked
    ranking = target.lm_head_shortlist_bits if quant.lm_head_shortlist_bits is None else quant.lm_head_shortlist_bits
    if not k:
        return 0, 0
    hidden, vocab = shapes[HEAD_NODE]
    head = hidden * vocab  # int8: a byte per weight
    # the ranking copy (the head's blocks; a 2-bit one has zero points)
    copy_mb = matrix_bytes(hidden, vocab, ranking, block, ranking == 2, 4, None, 4) / 1e6
    layers = sum(i * o * settings.get(n, {}).get("bits", bits) / 8 for n, (i, o) in shapes.items() if n != HEAD_NODE)
    share = head / (head + layers)
    why = None
    if target.execution_provider != ExecutionProvider.CPU:
        why = f"the {target.name} target runs {target.execution_provider.value}: the shortlist head is for the CPU"
    elif not fits:
        why = "it is built from a pruned int8 lm_head (builder exporter, CPU graph, text-only, lm_head int8)"
    elif asked is None and head < SHORTLIST_MIN_HEAD_MB * 1e6:
        why = (f"the int8 lm_head is {head / 1e6:.1f} MB, within a CPU's caches (under {SHORTLIST_MIN_HEAD_MB} MB): "
               "decoding does not read it from memory each token")
    elif asked is None and share < SHORTLIST_MIN_HEAD_SHARE:
        why = (f"the int8 lm_head is {share:.0%} of the weight bytes a decoded token reads (under "
               f"{SHORTLIST_MIN_HEAD_SHARE:.0%}): its {ranking}-bit ranking copy would add {copy_mb:.0f} MB to the file "
               f"to save under {SHORTLIST_MIN_HEAD_SHARE * (1 - ranking / 8):.0%} of them")
    elif 16 * k > vocab:
        why = f"{k} candidates of a {vocab}-token vocabulary would not be a shortlist (at most vocab / 16)"
    if why:
        if asked:
            raise EdgeQwenError(f"quantization.lm_head_shortlist: {asked} cannot be built here: {why}",
                                where=f"recipe {resolved.recipe.name}", hint="set lm_head_shortlist: 0 (the full head)")
        log("head.shortlist_off", f"full lm_head for decoding (the target's shortlist of {k} not built: {why})")
        return 0, 0
    fallback = " (a 2-bit copy whose candidates miss it is requantized to 4 bits and measured again)" if ranking == 2 else ""
    log("head.shortlist", f"decoding's lm_head is a shortlist: a {ranking}-bit copy of the head ranks the {vocab}-token "
        f"vocabulary, the top {k} are scored exactly with the int8 head's rows (the head is {share:.0%} of a token's "
        f"weight bytes; the copy adds {copy_mb:.0f} MB). Sampling without a top-k <= {k} reads the full head "
        "(lm_head.onnx); a constrained step reads it, or the allowed tokens' rows, only where the grammar refuses the "
        f"shortlist's pick; the accuracy stage gates the shortlist's recall{fallback}")
    return k, ranking


def _calibration_samples(recipe, spec, cfg: dict, log: _Log) -> int | None:
    """GPTQ's calibration sequences: the recipe's, or fewer where a model's per-token work (its forward passes and
    input Gram matrices) would take the calibration past its work budget — deterministic (from the config, not the
    machine), so the same recipe and checkpoint give the same artifact everywhere."""
    from ..quantize.calibration import MIN_SEQUENCES
    from .cost import GPTQ_TOKEN_BUDGET_TFLOP, gptq_tflop_per_token

    if not spec.calibration:
        return None
    cal = recipe.quantization.calibration
    if spec.name != "gptq":
        return cal.samples
    per_token = gptq_tflop_per_token(cfg)
    fit = max(MIN_SEQUENCES, int(GPTQ_TOKEN_BUDGET_TFLOP / (per_token * cal.seq_len)))
    if fit >= cal.samples:
        return cal.samples
    log("gptq.tokens", f"GPTQ calibration {fit} × {cal.seq_len} tokens (recipe: {cal.samples} × {cal.seq_len}): this "
        f"model's forward passes and Hessians cost {per_token * 1e3:.1f} GFLOP per token, kept under "
        f"{GPTQ_TOKEN_BUDGET_TFLOP} TFLOP (the 0.5B and 1.5B shapes keep every sequence)")
    return fit


def _context_and_cache(resolved: Resolved, cfg: dict, log: _Log) -> tuple[int, bool]:
    """The context the graph is built for (the recipe's, at most the model's own maximum) and whether its KV cache is
    fp16 (export/kv_fp16.py: the CPU layout's fp32 cache halved)."""
    recipe = resolved.recipe
    model_max = int(cfg.get("max_position_embeddings") or recipe.context_length)
    if recipe.context_length > model_max:
        log("context.clamp", f"context_length {recipe.context_length} -> {model_max}: the model's own "
            f"max_position_embeddings (positions past it were never trained)")
    kv_fp16 = resolved.kv_cache == KvCache.FP16 and resolved.target.fp32_graph
    if kv_fp16:
        log("kv.fp16", "KV cache in fp16: half its memory; attention runs in fp16 between casts (slower where the CPU has "
            "no fp16 arithmetic: x86 1.3-2.1x per attention node, benchmarks/kv_fp16_cost.py)")
    return min(recipe.context_length, model_max), kv_fp16


def _runtime_decisions(target, log: _Log) -> None:
    """What the target's runtime needs from the graph's surroundings: its KV layout and, for a web page, file sizes."""
    if not target.kv_in_place:
        log("kv.growing", "KV cache fed as past and returned one position longer as present each step (no shared "
            "past/present buffer): the layout onnxruntime-web runs; genai_config past_present_share_buffer false")
    if target.web_max_file_mb is not None:
        log("web.page", f"web page: onnxruntime-web on WebGPU (fp32, no shader-f16) or WebAssembly, accuracy level 0 "
            f"(the gate measures the fp32 compute the browser does); no fetched file over {target.web_max_file_mb} MB")


VISION_MAX_PIXELS = 28 * 28 * 256  # default image cap on a device: 448x448, 256 image tokens, 1024 encoder patches


def _vision(resolved: Resolved, ckpt: Checkpoint, arch, spec: AlgorithmSpec) -> VisionPlan:
    """Qwen2.5-VL: what the image side gets. The encoder's linears are int8 when the decoder is quantized (int4 costs
    ~10x its error for a few MB); the image area is capped (the encoder's attention grows with patches squared)."""
    recipe = resolved.recipe
    where = f"recipe {recipe.name} x {ckpt.architecture}"
    if recipe.exporter != Exporter.BUILDER:
        raise EdgeQwenError("vision models are exported with the builder (its Qwen2.5-VL decoder takes inputs_embeds "
                            "and 3-D positions)", where=where, hint="set exporter: builder")
    if spec.stage == "checkpoint":
        raise EdgeQwenError(f"quantization.algorithm {spec.name} calibrates a quantized checkpoint through the text "
                            "model's loader, which edgeqwen does not yet do for Qwen2.5-VL", where=where,
                            hint="use quantization.algorithm: rtn (or k_quant); mixed_precision: auto measures "
                            "the VL decoder and works with rtn")
    quantized = recipe.precision in (Precision.INT4, Precision.INT8)
    pixels = recipe.vision.max_pixels or VISION_MAX_PIXELS
    return VisionPlan(bits=8 if quantized else None, block=32, int8_table=quantized, max_pixels=int(pixels))


def _fit_block_to_table(block: int, hidden: int, want_table: bool, log: _Log) -> tuple[int, bool]:
    """The quantized embedding table (GatherBlockQuantized, quantize_axis=1) needs hidden_size to be a whole number
    of blocks (MatMulNBits pads K, so the MatMuls keep the recipe's block): the table's block is the largest that
    divides it, not above the recipe's."""
    if not want_table or hidden % block == 0:
        return block, want_table
    fits = [b for b in BLOCK_SIZES if b <= block and hidden % b == 0]
    if fits:
        log("block.table_fit", f"embedding table block {block} -> {fits[0]}: hidden_size {hidden} is not a multiple "
            f"of {block} (GatherBlockQuantized needs whole blocks; the MatMuls keep block {block})")
        return fits[0], True
    log("table.float_shape", f"embeddings kept in float: hidden_size {hidden} is not a multiple of any int4 block size "
        f"({', '.join(map(str, BLOCK_SIZES))})")
    return block, False


def _algorithm_that_runs(spec: AlgorithmSpec, shapes: dict, block: int, low_memory: bool, log: _Log
                         ) -> tuple[AlgorithmSpec, dict]:
    """Whole-group quantizers (GPTQ) take the largest block that divides an uneven K on that node alone, and fall
    back to rtn only where no block of 16 or more does; the low-memory path runs its own algorithm.
    Returns the algorithm and the per-node blocks it needs."""
    uneven: dict[str, int] = {}
    fitted: dict[str, dict] = {}
    for node, (k, _) in shapes.items():
        what = node.rsplit("/", 2)[-2] if node != HEAD_NODE else "lm_head"
        if k % block and what not in uneven:
            uneven[what] = k
        if k % block and spec.whole_groups and node != HEAD_NODE:
            fitted[node] = fit_block(k, block, True)
    if None in fitted.values():
        what, k = next((n.rsplit("/", 2)[-2], shapes[n][0]) for n, b in fitted.items() if b is None)
        log("algorithm.fallback", f"algorithm {spec.name} -> rtn: {what} K={k} is not a multiple of block {block} "
            "nor of any block of 16 or more (the pre-builder quantizers need whole groups)")
        spec, fitted = get_algorithm("rtn"), {}
    elif fitted:
        kinds = sorted({f"{n.rsplit('/', 2)[-2]} K={shapes[n][0]} -> block {b}" for n, b in fitted.items()})
        log("block.fit_k", f"algorithm {spec.name} needs whole groups: {'; '.join(kinds)} (the rest keep block {block})")
    for what, k in uneven.items():  # lm_head is always quantized in the builder, which pads
        if not spec.whole_groups or what == "lm_head":
            log("block.pad", f"{what} K={k} is not a multiple of block {block}: MatMulNBits pads the last block")
    fitted = {n: {"group_size": b} for n, b in fitted.items()}
    if low_memory and spec.low_memory != spec.name:
        log("algorithm.fallback", f"algorithm {spec.name} -> {spec.low_memory}: the low-memory path quantizes with "
            f"{spec.low_memory} only")
        spec = get_algorithm(spec.low_memory)
    for note in spec.notes:
        log(f"algorithm.{spec.name}", note)
    return spec, fitted if spec.whole_groups else {}


def _head_bits(resolved: Resolved, spec: AlgorithmSpec, bits: int, shares_table: bool, log: _Log) -> int | None:
    q = resolved.recipe.quantization
    if q.lm_head == HeadMode.FLOAT:
        if shares_table and q.embeddings == EmbeddingMode.INT8:
            raise EdgeQwenError("embeddings: int8 with lm_head: float cannot share the tied table",
                                where=f"recipe {resolved.recipe.name}: quantization",
                                hint="use lm_head: int8, or embeddings: float")
        return None
    head_bits = 8 if bits == 8 or q.lm_head == HeadMode.INT8 else bits
    if shares_table and q.embeddings == EmbeddingMode.INT8 and head_bits != 8:
        head_bits = 8
        log("head.int8_shared", "lm_head in int8: the tied embedding table it shares is asked to be int8")
    if spec.head_bits and head_bits != spec.head_bits:
        head_bits = spec.head_bits
        log("head.algorithm", f"lm_head in int{spec.head_bits}: the builder's {spec.name} always quantizes lm_head "
            f"to {spec.head_bits} bits")
    return head_bits


def _symmetry(resolved: Resolved, spec: AlgorithmSpec, log: _Log) -> tuple[bool, float | None]:
    """(the base scheme is symmetric, the price of zero points where the plan weighs them per matrix)."""
    q = resolved.recipe.quantization
    where = f"recipe {resolved.recipe.name}: quantization.overrides"
    if q.overrides and not spec.takes_overrides:
        raise EdgeQwenError(f"algorithm {spec.name} does not take per-layer overrides here (the GPTQ layout it is "
                            "saved in has one bit width for the whole model)", where=where,
                            hint="drop the overrides, or use algorithm: gptq for mixed precision")
    cost = _zero_point_pricing(resolved, spec, log)
    if cost is not None:
        return True, cost
    if spec.asym_reason and q.symmetric:
        log("symmetric.off", f"symmetric -> false: {spec.asym_reason}")
        return False, None
    return q.symmetric, None


def _zero_point_pricing(resolved: Resolved, spec: AlgorithmSpec, log: _Log) -> float | None:
    """`mixed_precision.zero_points: auto` → the target's measured zero-point cost (the plan's base goes symmetric
    and each matrix's zero points become an upgrade priced by it), or None: zero points as the recipe says."""
    q, target = resolved.recipe.quantization, resolved.target
    mp = q.mixed_precision
    if not mp.auto or mp.zero_points != ZeroPoints.AUTO:
        return None
    if spec.asym_reason:
        log("zero_points.kept", f"zero_points auto: kept everywhere: {spec.asym_reason}")
        return None
    cost = target.int4_zero_point_cost
    if cost is None:
        log("zero_points.kept", f"zero_points auto: kept everywhere: target {target.name} has no measured "
            "int4_zero_point_cost (benchmarks/zero_point_cost.py measures it)")
        return None
    log("zero_points.auto", f"zero_points auto: symmetric base; a matrix keeps zero points only where the accuracy "
        f"they buy is worth their time, priced at {cost:.0%} of its bytes (target {target.name}'s measured "
        "int4_zero_point_cost)")
    return cost


TABLE_SHARE = 0.1  # an int4 embedding table may cost at most this share of the KLD target, else it is int8


def _auto_mixed(resolved: Resolved, ckpt: Checkpoint, spec: AlgorithmSpec, bits: int, block: int, symmetric: bool,
                head_bits: int | None, separate_table: bool, sensitivity: dict | None, log: _Log,
                zero_point_cost: float | None = None) -> tuple[dict, MixedPlan, int | None]:
    """`mixed_precision: auto` → per-node {bits, group_size} from the measured sensitivity (planner/mixed.py), the
    summary the plan carries, and the bits of an untied embedding table (`embeddings: quantized`: int4 where its
    measured KLD is small, else int8). The lm_head's and the table's measured KLD are taken off the target before the
    decoder layers are planned. Without a measurement: no settings and `pending` (the build measures first)."""
    recipe = resolved.recipe
    mp = recipe.quantization.mixed_precision
    if not mp.auto:
        return {}, MixedPlan(), None
    where = f"recipe {recipe.name}: quantization.mixed_precision"
    if bits != 4:
        raise EdgeQwenError("mixed_precision: auto plans int4 recipes (it upgrades sensitive matrices from the int4 "
                            f"base); this recipe is {recipe.precision.value}", where=where, hint="drop mixed_precision")
    if not spec.takes_overrides:
        raise EdgeQwenError(f"mixed_precision: auto needs per-matrix bits, which algorithm {spec.name} cannot write "
                            "(one bit width for the whole model)", where=where,
                            hint="use algorithm: gptq or rtn with mixed_precision: auto")
    gate = recipe.accuracy.max_kld
    target = (sensitivity or {}).get("replan_target_kld") or mp.target_kld or (0.5 * gate if gate else 0.01)
    if sensitivity is None:
        log("mixed.pending", f"mixed precision auto: per-matrix bits from a sensitivity measurement on calibration "
            f"text (made by `edgeqwen build`; planned KLD target {target:.4f})")
        return {}, MixedPlan(pending=True, target_kld=target, zero_point_cost=zero_point_cost), None
    from .mixed import choose

    scale = float(sensitivity.get("kld_scale", 1.0))

    def measured(entries: dict, want_bits: int) -> float:
        hits = [v for k, v in entries.items() if k.startswith(f"int{want_bits}/")]
        return scale * min(hits) if hits else 0.0

    reserved = measured(sensitivity.get("head", {}), head_bits) if head_bits else 0.0
    table_bits = None
    if separate_table and recipe.quantization.embeddings == EmbeddingMode.QUANTIZED and sensitivity.get("table"):
        t4, t8 = measured(sensitivity["table"], 4), measured(sensitivity["table"], 8)
        table_bits = 4 if t4 <= TABLE_SHARE * target else 8
        reserved += t4 if table_bits == 4 else t8
        log("mixed.table", f"mixed precision auto: embedding table int{table_bits} (measured KLD int4 {t4:.4f}, int8 "
            f"{t8:.4f}; int4 is kept only below {TABLE_SHARE:.0%} of the target)")
    layer_target = max(target - reserved, 0.25 * target)
    # a soft cap holds against the gate, not the target; after a measured miss (replan_target_kld) the target wins
    replanning = bool((sensitivity or {}).get("replan_target_kld"))
    layer_gate = max(gate - reserved, layer_target) if gate and not replanning else None

    choice = choose(sensitivity, nodes_for=get_architecture(ckpt.architecture).module_nodes[recipe.exporter.value],
                    base_bits=bits, base_block=block, symmetric=symmetric,
                    formats=[(f.bits, f.block_size) for f in mp.formats], whole_groups=spec.whole_groups,
                    scale_bytes=4 if resolved.target.fp32_graph else 2, target_kld=layer_target,
                    max_bits_per_weight=mp.max_bits_per_weight, objective=mp.objective.value, strict_cap=mp.strict_cap,
                    gate_kld=layer_gate,
                    zero_point_cost=zero_point_cost if sensitivity.get("zero_points") else None)
    for code, message in choice.decisions:
        log(code, message)
    summary = {**choice.summary, "target_kld": target, "layer_target_kld": round(layer_target, 6),
               "head_table_kld": round(reserved, 6), "sensitivity_key": sensitivity.get("cache_key"),
               "gate_kld": gate}
    summary["planned_kld"] = round(choice.summary.get("planned_kld", 0.0) + reserved, 6)
    if "capped_kld" in choice.summary:
        summary["capped_kld"] = round(choice.summary["capped_kld"] + reserved, 6)
    return choice.node_settings, from_dict(MixedPlan, summary, where="mixed precision summary"), table_bits


def _node_settings(resolved: Resolved, spec: AlgorithmSpec, shapes: dict, layers: int, bits: int, block: int,
                   head_bits: int | None, planned: dict, log: _Log) -> tuple[dict, int | None, int]:
    """Per-node settings: what the planner set (`planned`: whole-group blocks, auto mixed precision), then the
    recipe's overrides on top as exact node settings; the lm_head's own bits and block pulled out of them."""
    q, target = resolved.recipe.quantization, resolved.target
    head_block = block
    if (head_bits == 8 and bits == 4 and not spec.head_bits and shapes[HEAD_NODE][0] % HEAD_BLOCK == 0
            and target.graph_ep == "cpu"):
        # 8 bits need no small blocks: one scale + zero point per 128 weights, no measurable accuracy change (tested),
        # and onnxruntime's CPU 8-bit kernel decodes the 0.5B head 26 % faster. Recipe overrides still win.
        head_block = HEAD_BLOCK
        log("head.block", f"lm_head int8 in blocks of {HEAD_BLOCK} (the int4 layers keep block {block})")
    explicit, matched = expand_overrides({k: v.as_entry() for k, v in q.overrides.items()}, list(shapes), layers,
                                         f"recipe {resolved.recipe.name}: quantization.overrides")
    settings = {n: dict(v) for n, v in planned.items()}
    for node, entry in explicit.items():
        settings[node] = {**settings.get(node, {}), **entry}
    for pattern, count in matched:
        log("override", f"override {pattern!r} -> {q.overrides[pattern].as_entry()} on {count} node(s)")
    head = settings.get(HEAD_NODE, {})
    head_block = head.pop("group_size", head_block)
    if head_bits is not None:
        head_bits = head.pop("bits", head_bits)
    if HEAD_NODE in settings and not head:
        del settings[HEAD_NODE]
    return settings, head_bits, head_block


def _odd_block_fallback(spec: AlgorithmSpec, shapes: dict, settings: dict, default: dict, head_bits: int | None,
                        head_block: int, low_memory: bool, exporter: str, log: _Log) -> None:
    """onnxruntime's RTN packs 4-bit zero points two per byte across rows: an odd block count per column breaks its
    reshape, so those nodes go symmetric (no zero points). Only where the builder's own quantizer writes them."""
    if low_memory or exporter != "builder" or spec.stage == "graph":
        return
    for node in shapes if spec.stage == "builder" else [HEAD_NODE]:
        if node == HEAD_NODE and head_bits is None:
            continue
        entry = {**default, **({"bits": head_bits, "group_size": head_block} if node == HEAD_NODE else {}),
                 **settings.get(node, {})}
        blocks = -(-shapes[node][0] // entry["group_size"])
        if entry["bits"] == 4 and entry["scheme"] == "asym" and blocks % 2 == 1:
            settings[node] = {**settings.get(node, {}), "scheme": "sym"}
            log("node.odd_blocks", f"{node}: K={shapes[node][0]} is {blocks} blocks of {entry['group_size']} (odd) -> "
                "symmetric (onnxruntime's asymmetric 4-bit packing needs an even block count)")


def _table(tied: bool, want_table: bool, head_bits: int | None, head_block: int, block: int, table_bits: int,
           portable: bool, log: _Log) -> TablePlan:
    if tied and want_table and head_bits is not None and not portable:
        log("table.shared", f"embeddings tied to lm_head: one shared int{head_bits} table (GatherBlockQuantized)")
        return TablePlan(TableMode.SHARED, head_bits, head_block)
    if want_table:
        if tied:
            log("table.twice", "tied embeddings stored twice (portable exporter): a quantized lm_head and a "
                "separately quantized embedding table")
        log("table.separate", f"embeddings quantized separately to int{table_bits} (GatherBlockQuantized, uint8 storage)")
        return TablePlan(TableMode.SEPARATE, table_bits, block)
    if tied:
        log("table.float", "embeddings in float")
    return TablePlan(TableMode.FLOAT)


def _check_exporter(resolved: Resolved, ckpt: Checkpoint, spec: AlgorithmSpec, low_memory: bool) -> None:
    """What the chosen exporter cannot do is refused before any work."""
    recipe, target = resolved.recipe, resolved.target
    cfg = ckpt.config
    if recipe.exporter == Exporter.PORTABLE:
        where = f"recipe {recipe.name}: exporter portable"
        if not target.fp32_graph or recipe.precision == Precision.FP16:
            raise EdgeQwenError(f"the portable exporter builds CPU/NPU fp32/int4/int8 artifacts; this recipe asks for "
                                f"{recipe.precision.value} on {target.name}", where=where,
                                hint="use exporter: builder for GPU/WebGPU targets")
        if not spec.portable:
            known = ", ".join(s for s in _portable_algorithms())
            raise EdgeQwenError(f"the portable exporter quantizes with {known} only (recipe asks for {spec.name})",
                                where=where, hint="set quantization.algorithm: rtn, or use exporter: builder")
        if low_memory:
            raise EdgeQwenError("--low-memory is a builder-exporter option", where=where, hint="drop --low-memory")
        if target.artifact_format != ArtifactFormat.ONNX:
            raise EdgeQwenError("the portable exporter writes .onnx artifacts only", where=where,
                                hint="use exporter: builder for ort-mobile")
        return
    if target.static_shapes or target.weight_encoding != WeightEncoding.MATMULNBITS:
        raise EdgeQwenError(f"target {target.name} needs static shapes / QDQ weights, which the model builder does not write",
                            where=f"recipe {recipe.name}: exporter builder", hint="use exporter: portable")
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    if head_dim % 8:
        raise EdgeQwenError(
            f"head_dim {head_dim} of every attention layer (model.layers.*.self_attn) is not a multiple of 8: "
            "onnxruntime's GroupQueryAttention kernel, which the builder's graph uses, refuses it at run time",
            where=f"{ckpt.path / 'config.json'}: hidden_size {cfg['hidden_size']} / num_attention_heads "
                  f"{cfg['num_attention_heads']}",
            hint="this checkpoint cannot be built with the builder exporter; prune or fine-tune to a head_dim divisible by 8")


def _portable_algorithms() -> list[str]:
    from ..quantize.registry import algorithms

    return [s.name for s in algorithms() if s.portable]
