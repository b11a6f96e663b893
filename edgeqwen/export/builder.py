"""Export + weight quantization with onnxruntime-genai's model builder (run in a child process)."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..checkpoint import Checkpoint
from ..errors import EdgeQwenError
from ..log import stage_log
from ..recipe import CALIBRATED, Algorithm, EmbeddingMode, Exporter, HeadMode, Resolved
from ..targets import Precision

BLOCK_SIZES = (256, 128, 64, 32, 16)
HEAD_BLOCK = 128  # block size of an int8 lm_head in int4 recipes


@dataclass
class ExportPlan:
    """Everything the builder worker needs, plus the decisions to record in the manifest."""

    input: str
    output: str
    cache_dir: str
    precision: str
    builder_precision: str
    execution_provider: str
    matmul_bits: int
    block_size: int
    symmetric: bool
    accuracy_level: int
    quantize_gather: bool
    extra_options: dict
    gather_bits: int = 4
    node_overrides: dict = field(default_factory=dict)
    decisions: list = field(default_factory=list)
    low_memory: bool = False
    exporter: str = "builder"
    algorithm: str = "rtn"  # what really runs (a recipe's gptq can fall back to rtn, recorded in decisions)
    context_length: int = 4096
    weight_encoding: str = "matmulnbits"
    static_shapes: bool = False

    def as_json(self) -> dict:
        return dict(self.__dict__)


def _k_dims(config: dict) -> dict[str, int]:
    """Input (K) dimension of every quantized MatMul family, keyed by what it feeds."""
    hidden = config["hidden_size"]
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or hidden // heads
    return {"hidden_size (q/k/v, gate/up, lm_head)": hidden, "intermediate_size (down_proj)": config["intermediate_size"],
            "num_heads*head_dim (o_proj)": heads * head_dim}


def plan_export(resolved: Resolved, ckpt: Checkpoint, output: Path, cache_dir: Path, low_memory: bool = False) -> ExportPlan:
    recipe, target = resolved.recipe, resolved.target
    q = recipe.quantization
    precision = recipe.precision
    decisions: list[str] = []
    extra: dict = {"hf_token": "false", "hf_remote": False}
    block = resolved.block_size
    quantized = precision in (Precision.INT4, Precision.INT8)
    quantize_embeddings = quantized and q.embeddings != EmbeddingMode.FLOAT
    quantize_gather = False
    algorithm = q.algorithm
    gather_bits = 8 if precision == Precision.INT8 or q.embeddings == EmbeddingMode.INT8 else 4
    node_overrides: dict[str, dict] = {}

    cfg = ckpt.config
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    portable = recipe.exporter == Exporter.PORTABLE
    if portable:
        _check_portable(resolved, low_memory)
    elif target.static_shapes or target.weight_encoding.value != "matmulnbits":
        raise EdgeQwenError(f"target {target.name} needs static shapes / QDQ weights, which the model builder does not write",
                            where=f"recipe {recipe.name}: exporter builder", hint="use exporter: portable")
    elif head_dim % 8:
        raise EdgeQwenError(
            f"head_dim {head_dim} of every attention layer (model.layers.*.self_attn) is not a multiple of 8: "
            "onnxruntime's GroupQueryAttention kernel, which the builder's graph uses, refuses it at run time",
            where=f"{ckpt.path / 'config.json'}: hidden_size {cfg['hidden_size']} / num_attention_heads {cfg['num_attention_heads']}",
            hint="this checkpoint cannot be built with the builder exporter; prune or fine-tune to a head_dim divisible by 8",
        )
    if quantized:
        dims = _k_dims(ckpt.config)
        hidden = ckpt.config["hidden_size"]
        # MatMulNBits pads K to a whole block, so any K works for MatMuls. A quantized embedding
        # table (GatherBlockQuantized, quantize_axis=1) needs hidden_size to be a whole number of
        # blocks: pick the largest block size that divides it, not larger than the recipe's.
        if quantize_embeddings and hidden % block:
            fits = [b for b in BLOCK_SIZES if b <= block and hidden % b == 0]
            if fits:
                decisions.append(f"block_size {block} -> {fits[0]}: hidden_size {hidden} is not a multiple of {block} "
                                 "(needed by the quantized embedding table)")
                block = fits[0]
            else:
                decisions.append(f"embeddings kept in float: hidden_size {hidden} is not a multiple of any int4 block size "
                                 f"({', '.join(map(str, BLOCK_SIZES))})")
                quantize_embeddings = False
        for what, k in dims.items():
            if k % block:
                decisions.append(f"{what}={k} is not a multiple of block {block}: MatMulNBits pads the last block")
        uneven = {what: k for what, k in dims.items() if k % block}
        if q.algorithm in CALIBRATED and uneven:
            # Olive's GPTQ quantizes whole groups only (it asserts in_features % group_size == 0); AutoRound
            # keeps the same rule (a partial last group through the builder's import is untested).
            algorithm = Algorithm.RTN
            what, k = next(iter(uneven.items()))
            decisions.append(f"algorithm {q.algorithm.value} -> rtn: {what}={k} is not a multiple of block {block} "
                             "(the pre-builder quantizers need whole groups)")
        tied = ckpt.tied_embeddings
        lm_head_int8 = precision == Precision.INT8 or q.lm_head == HeadMode.INT8
        if tied and quantize_embeddings and q.embeddings == EmbeddingMode.INT8 and not lm_head_int8:
            if q.lm_head == HeadMode.FLOAT:
                raise EdgeQwenError("embeddings: int8 with lm_head: float cannot share the tied table",
                                    where=f"recipe {recipe.name}: quantization", hint="use lm_head: int8, or embeddings: float")
            lm_head_int8 = True
            decisions.append("lm_head in int8: the tied embedding table it shares is asked to be int8")
        if algorithm == Algorithm.K_QUANT and q.lm_head == HeadMode.SAME and not lm_head_int8:
            # onnxruntime-genai 0.14.1 quantizes lm_head to 8 bits for every k_quant variant; say so, and
            # name it int8 so the shared embedding table points at the tensor that really exists.
            lm_head_int8 = True
            decisions.append("lm_head in int8: the builder's k_quant always quantizes lm_head to 8 bits")
        if low_memory and algorithm == Algorithm.HQQ:
            algorithm = Algorithm.RTN
            decisions.append("algorithm hqq -> rtn: the low-memory path quantizes with RTN only")
        # GPTQ/AutoRound run before the builder and HQQ replaces its quantizer; the builder itself is told "rtn",
        # which is how it wires the shared lm_head/embedding table.
        algo = (Algorithm.RTN if algorithm in CALIBRATED + (Algorithm.HQQ,) else algorithm).value + ("_last" if lm_head_int8 else "")
        symmetric = q.symmetric
        if algorithm == Algorithm.K_QUANT and symmetric:
            # k-quant always writes zero points; the builder wires them into the shared embedding
            # table only when told the scheme is asymmetric (otherwise the embeddings decode wrong).
            symmetric = False
            decisions.append("symmetric -> false: k_quant stores zero points (asymmetric) for every block")
        if algorithm == Algorithm.HQQ:
            decisions.append("hqq: float zero points take a slow MatMulNBits path in onnxruntime 1.32 (Qwen2.5-0.5B "
                             "shape on 2 cores: 4.7 tok/s decode vs 77.8 for rtn); rounding them to integers loses "
                             "HQQ's gain (tiny-qwen2 KLD 0.054 -> 0.073, rtn 0.061)")
            if symmetric:
                symmetric = False
                decisions.append("symmetric -> false: HQQ optimizes a zero point per block (stored as float)")
        if algorithm in CALIBRATED and symmetric:
            # onnxruntime-genai 0.14.1 packs q/k/v of a pre-quantized model by concatenating their
            # zero points; symmetric Olive weights have none and the builder crashes (TypeError).
            symmetric = False
            decisions.append(f"symmetric -> false: onnxruntime-genai 0.14.1 cannot import symmetric {algorithm.value} "
                             "weights (its q/k/v packer needs zero points)")
        if algorithm == Algorithm.AUTOROUND and q.overrides:
            raise EdgeQwenError("algorithm autoround does not take per-layer overrides here (the GPTQ layout it is "
                                "saved in has one bit width for the whole model)",
                                where=f"recipe {recipe.name}: quantization.overrides",
                                hint="drop the overrides, or use algorithm: gptq for mixed precision")
        if algorithm == Algorithm.GPTQ:
            for pattern, o in q.overrides.items():
                if o.symmetric:
                    raise EdgeQwenError(
                        f"override {pattern!r} asks for symmetric weights, which GPTQ artifacts cannot hold here",
                        where=f"recipe {recipe.name}: quantization.overrides",
                        hint="drop `symmetric: true` from the override (onnxruntime-genai 0.14.1 needs zero points "
                        "for pre-quantized q/k/v), or use algorithm: rtn")
        extra.update(
            int4_block_size=block,
            int4_is_symmetric=symmetric,
            int4_accuracy_level=resolved.accuracy_level,
            int4_algo_config=algo,
        )
        if q.lm_head == HeadMode.FLOAT:
            extra["int4_nodes_to_exclude"] = ["/lm_head/MatMul"]
        if (lm_head_int8 and precision == Precision.INT4 and algorithm != Algorithm.K_QUANT and hidden % HEAD_BLOCK == 0
                and target.execution_provider.value == "cpu"):
            # 8 bits need no small blocks: one scale + zero point per 128 weights instead of per `block`, no
            # measurable accuracy change (tested), and onnxruntime's CPU 8-bit kernel decodes the 0.5B head 26 %
            # faster (benchmarks/README.md). CPU only: that is where it was measured; GPU recipes keep their
            # block. Recipe overrides of /lm_head/MatMul still win.
            node_overrides["/lm_head/MatMul"] = {"group_size": HEAD_BLOCK}
            decisions.append(f"lm_head int8 in blocks of {HEAD_BLOCK} (the int4 layers keep block {block})")
        for pattern, o in q.overrides.items():
            node_overrides[pattern] = {**node_overrides.get(pattern, {}), **o.as_entry()}
        # Tied embeddings: share the quantized lm_head table with the embedding Gather
        # (GatherBlockQuantized) — one copy of the largest tensor instead of two.
        share = tied and quantize_embeddings and q.lm_head != HeadMode.FLOAT and not portable
        extra["shared_embeddings"] = share
        if share:
            decisions.append(f"embeddings tied to lm_head: one shared int{8 if lm_head_int8 else 4} table (GatherBlockQuantized)")
        elif quantize_embeddings:
            quantize_gather = True
            if tied:
                decisions.append("tied embeddings stored twice (portable exporter): a quantized lm_head and a "
                                 "separately quantized embedding table")
            decisions.append(f"embeddings quantized separately to int{gather_bits} (GatherBlockQuantized, uint8 storage)")
        elif tied:
            decisions.append("embeddings in float")
    if low_memory and quantized:
        decisions.append("low-memory export: each MatMul is block-quantized in place with onnxruntime's C++ "
                         "quantizer (min/max RTN) and its float weight dropped")
        if q.algorithm == Algorithm.K_QUANT:
            decisions.append(f"algorithm {q.algorithm.value} -> rtn: the low-memory path quantizes with RTN only")
    builder_precision = {"int4": "int4", "int8": "int4", "fp16": "fp16", "fp32": "fp32"}[precision.value]
    return ExportPlan(
        input=str(ckpt.path),
        output=str(output),
        cache_dir=str(cache_dir),
        precision=precision.value if precision != Precision.INT8 else "int4",
        builder_precision=builder_precision,
        execution_provider=target.execution_provider.value,
        matmul_bits=8 if precision == Precision.INT8 else 4,
        block_size=block,
        symmetric=extra.get("int4_is_symmetric", q.symmetric),
        accuracy_level=resolved.accuracy_level,
        quantize_gather=quantize_gather,
        gather_bits=gather_bits,
        extra_options=extra,
        node_overrides=node_overrides,
        decisions=decisions,
        low_memory=low_memory and quantized,
        exporter=recipe.exporter.value,
        weight_encoding=target.weight_encoding.value,
        static_shapes=target.static_shapes,
        algorithm=algorithm.value if quantized else "none",
        context_length=min(recipe.context_length, int(cfg.get("max_position_embeddings") or recipe.context_length)),
    )


def _check_portable(resolved: Resolved, low_memory: bool) -> None:
    """The portable path covers CPU fp32/int4/int8 with RTN weights; say so before any work."""
    recipe, q = resolved.recipe, resolved.recipe.quantization
    where = f"recipe {recipe.name}: exporter portable"
    if resolved.target.execution_provider.value not in ("cpu", "qnn") or recipe.precision.value == "fp16":
        raise EdgeQwenError(f"the portable exporter builds CPU/NPU fp32/int4/int8 artifacts; this recipe asks for "
                            f"{recipe.precision.value} on {resolved.target.name}", where=where,
                            hint="use exporter: builder for GPU/WebGPU targets")
    if q.algorithm != Algorithm.RTN:
        raise EdgeQwenError(f"the portable exporter quantizes with rtn only (recipe asks for {q.algorithm.value})",
                            where=where, hint="set quantization.algorithm: rtn, or use exporter: builder")
    if low_memory:
        raise EdgeQwenError("--low-memory is a builder-exporter option", where=where, hint="drop --low-memory")
    if resolved.target.artifact_format.value != "onnx":
        raise EdgeQwenError("the portable exporter writes .onnx artifacts only", where=where,
                            hint="use exporter: builder for ort-mobile")


@dataclass
class ExportResult:
    wall_s: float
    peak_rss_mb: float
    log_path: Path


def run_export(plan: ExportPlan, log_path: Path) -> ExportResult:
    plan_path = Path(plan.cache_dir) / "plan.json"
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_text(json.dumps(plan.as_json(), indent=2))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", f"edgeqwen.export.{plan.exporter}_worker", str(plan_path)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True, bufsize=1,
        )
        assert proc.stdout is not None
        for line in proc.stdout:
            log.write(line)
            text = line.strip()
            if text.startswith(("Reading", "Saving ONNX", "Saving GenAI", "Saving processing", "Exporting", "Fusing",
                                "Fusion:")):
                stage_log(f"  {plan.exporter}: {text}")
        rc = proc.wait()
    wall = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    if rc != 0:
        tail = "".join(Path(log_path).read_text().splitlines(keepends=True)[-15:])
        raise EdgeQwenError(
            f"the {'model builder' if plan.exporter == 'builder' else plan.exporter + ' exporter'} failed (exit code {rc}); "
            f"last lines of its log:\n{tail}",
            where=str(log_path),
            hint="see the full builder log above; an unusual layer shape or an option the builder lacks is the usual cause",
        )
    worker_notes = Path(plan.cache_dir) / "worker_decisions.json"
    if worker_notes.exists():
        plan.decisions.extend(json.loads(worker_notes.read_text()))
    return ExportResult(wall_s=wall, peak_rss_mb=peak_mb, log_path=log_path)
