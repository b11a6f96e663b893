"""Recipes (recipes/<model>/<target>-<precision>.yaml): how to build one model for one target."""

from __future__ import annotations

import dataclasses
import difflib
import enum
import math
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EdgeQwenError
from .schema import UnknownValue, file_key, load_file_schema, read_yaml, to_dict
from .resources import search_dirs, shipped_dir
from .targets import ExecutionProvider, KvCache, Precision, Target, load_target

SCHEMA_VERSION = 1
MAX_CONTEXT = 1 << 20  # tokens: above every Qwen model's own maximum (Qwen2.5-1M: 1,010,000)


class Exporter(str, enum.Enum):
    BUILDER = "builder"  # onnxruntime-genai model builder: GQA, MatMulNBits, SkipSimplifiedLayerNorm, rotary
    PORTABLE = "portable"  # optimum-onnx export (standard ops, growing KV) + onnxruntime transformer-optimizer fusions


@dataclass(frozen=True)
class Calibration:
    """Data for calibrated algorithms (gptq, autoround): the packaged text unless `edgeqwen build --calib FILE`."""

    samples: int = 32  # sequences of seq_len tokens (fewer if the text is shorter). 32 x 256 keeps GPTQ on the
    # Qwen2.5-0.5B shape near 4 minutes on 2 cores (48: 6.2 min); on the trained tiny models it costs 2-3 % KLD
    # against 48 (0.0169 vs 0.0166, 0.0190 vs 0.0185), and 48 matched 128 (0.0140 vs 0.0145)
    seq_len: int = 256
    damp_percent: float = 0.01  # GPTQ Hessian dampening
    iters: int = 200  # AutoRound optimization steps per decoder layer

    def __post_init__(self):
        if self.samples < 1 or self.seq_len < 16:
            raise ValueError(f"calibration needs samples >= 1 and seq_len >= 16 (got {self.samples}, {self.seq_len})")
        if self.iters < 1:
            raise ValueError(f"calibration iters must be >= 1 (got {self.iters})")
        if not 0 < self.damp_percent < 1:
            raise ValueError(f"damp_percent {self.damp_percent} must be in (0, 1)")


class EmbeddingMode(str, enum.Enum):
    QUANTIZED = "quantized"  # at the recipe's bits; GatherBlockQuantized (shared with lm_head where the model ties them)
    INT8 = "int8"  # an 8-bit table even in int4 recipes (tied models: lm_head becomes int8 to share it)
    FLOAT = "float"


class HeadMode(str, enum.Enum):
    SAME = "same"  # lm_head at the recipe's precision
    INT8 = "int8"
    FLOAT = "float"


@dataclass(frozen=True)
class LayerOverride:
    """Per-MatMul settings for nodes whose name matches a glob, e.g. "/model/layers.0/*" or "*/down_proj/*"."""

    bits: int | None = None  # 4 or 8
    block_size: int | None = None
    symmetric: bool | None = None

    def __post_init__(self):
        if self.bits not in (None, 4, 8):
            raise ValueError(f"override bits {self.bits} must be 4 or 8")
        if self.block_size is not None and self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"override block_size {self.block_size} must be one of 16, 32, 64, 128, 256")

    def as_entry(self) -> dict:
        """The quantizers' per-node vocabulary: {bits, group_size, scheme} with only the set fields."""
        entry = {}
        if self.bits is not None:
            entry["bits"] = self.bits
        if self.block_size is not None:
            entry["group_size"] = self.block_size
        if self.symmetric is not None:
            entry["scheme"] = "sym" if self.symmetric else "asym"
        return entry


class MixedMode(str, enum.Enum):
    OFF = "off"
    AUTO = "auto"  # bits/block per decoder-layer MatMul from measured sensitivity (edgeqwen/planner/mixed.py)


class ZeroPoints(str, enum.Enum):
    ALWAYS = "always"  # every matrix in the recipe's own scheme (quantization.symmetric)
    AUTO = "auto"  # symmetric unless a matrix's zero points buy more accuracy than their kernel time costs (the
    # target's int4_zero_point_cost, priced as that share of the matrix's bytes; planner/mixed.py)


class Objective(str, enum.Enum):
    FEWEST_BYTES = "fewest_bytes"  # stop upgrading once the planned KLD meets its target
    BEST_ACCURACY = "best_accuracy"  # spend the whole max_bits_per_weight budget


@dataclass(frozen=True)
class MixedPrecision:
    """`mixed_precision: auto`: each decoder layer's qkv/o/gate/up/down MatMul is measured on calibration text (KLD vs
    the fp32 model when that one matrix is taken to the base format), then upgraded to a costlier format where the
    KLD saved per byte is largest, until the planned KLD meets `target_kld` (or the size cap binds)."""

    mode: MixedMode = MixedMode.OFF
    target_kld: float | None = None  # None: half of accuracy.max_kld (0.01 without a KLD gate)
    max_bits_per_weight: float | None = None  # cap over the decoder-layer weights; llama.cpp Q4_0 is 4.5
    strict_cap: bool = False  # False: exceed the cap (recorded) where the plan within it is predicted to miss the gate's
    # max_kld (or, without a KLD gate, the target); True: never
    objective: Objective = Objective.FEWEST_BYTES
    zero_points: ZeroPoints = ZeroPoints.ALWAYS
    formats: tuple[LayerOverride, ...] = (LayerOverride(bits=4, block_size=64), LayerOverride(bits=4, block_size=32),
                                          LayerOverride(bits=8, block_size=128))  # upgrades; costlier than the base
    samples: int = 4  # calibration sequences for the measurement
    seq_len: int = 128

    def __post_init__(self):
        if self.target_kld is not None and not 0 < self.target_kld < 1:
            raise ValueError(f"mixed_precision.target_kld {self.target_kld} must be in (0, 1)")
        if self.max_bits_per_weight is not None and not 2 < self.max_bits_per_weight <= 16:
            raise ValueError(f"mixed_precision.max_bits_per_weight {self.max_bits_per_weight} must be in (2, 16]")
        if self.samples < 1 or self.seq_len < 16:
            raise ValueError(f"mixed_precision needs samples >= 1 and seq_len >= 16 (got {self.samples}, {self.seq_len})")
        for f in self.formats:
            if f.bits is None or f.block_size is None or f.symmetric is not None:
                raise ValueError("mixed_precision.formats entries need bits and block_size (and no symmetric), "
                                 f"e.g. {{bits: 8, block_size: 128}}; got {f}")

    @property
    def auto(self) -> bool:
        return self.mode == MixedMode.AUTO


@dataclass(frozen=True)
class Quantization:
    algorithm: str = "rtn"  # a registered algorithm (edgeqwen/quantize/algorithms/)
    block_size: int | None = None  # None: the target's int4_block_size
    symmetric: bool = True
    accuracy_level: int | None = None  # None: the target's
    embeddings: EmbeddingMode = EmbeddingMode.QUANTIZED
    lm_head: HeadMode = HeadMode.SAME
    # decoding's lm_head as a shortlist of this many candidates (export/shortlist_head.py): None = the target's
    # lm_head_shortlist, 0 = the full head
    lm_head_shortlist: int | None = None
    # the bits of its ranking copy (export/ranking_quant.py): 2 or 4; None = the target's lm_head_shortlist_bits
    lm_head_shortlist_bits: int | None = None
    overrides: dict[str, LayerOverride] = field(default_factory=dict)  # mixed precision by node-name glob
    mixed_precision: MixedPrecision | str = field(default_factory=MixedPrecision)  # `auto` or a mapping
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self):
        if isinstance(self.mixed_precision, str):  # `mixed_precision: auto` is short for {mode: auto}
            try:
                object.__setattr__(self, "mixed_precision", MixedPrecision(mode=MixedMode(self.mixed_precision)))
            except ValueError:
                more = ", or a mapping {mode: auto, target_kld: ..., max_bits_per_weight: ...}"
                raise UnknownValue("mixed_precision", self.mixed_precision, ("off", "auto"), more=more) from None
        if self.block_size is not None and self.block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"block_size {self.block_size} must be one of 16, 32, 64, 128, 256")
        if self.lm_head_shortlist is not None and not 0 <= self.lm_head_shortlist <= 4096:
            raise ValueError(f"lm_head_shortlist {self.lm_head_shortlist} must be 0 (the full head) or a candidate count "
                             "in [1, 4096]")
        if self.lm_head_shortlist_bits not in (None, 2, 4):
            raise ValueError(f"lm_head_shortlist_bits {self.lm_head_shortlist_bits} must be 2 or 4 (the bits of the "
                             "shortlist's ranking copy)")
        from .quantize.registry import algorithm_names

        if self.algorithm not in algorithm_names():
            raise UnknownValue("algorithm", self.algorithm, algorithm_names())

    @property
    def spec(self):
        """The algorithm's registry entry."""
        from .quantize.registry import get_algorithm

        return get_algorithm(self.algorithm)


@dataclass(frozen=True)
class Generation:
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 20
    repetition_penalty: float = 1.05
    max_new_tokens: int = 256
    system_prompt: str | None = None  # used when a conversation has no system message (runner, server)

    def __post_init__(self):
        """The ranges every request to the artifact is held to (runtime Sampling.validate), so no recipe builds an
        artifact whose own defaults are refused."""
        checks = (("temperature", self.temperature, lambda v: v == 0 or 1e-4 <= v <= 5, "0 (greedy) or in [0.0001, 5]"),
                  ("top_p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1]"),
                  ("top_k", self.top_k, lambda v: v >= 0, ">= 0"),
                  ("repetition_penalty", self.repetition_penalty, lambda v: 0 < v <= 10, "in (0, 10]"),
                  ("max_new_tokens", self.max_new_tokens, lambda v: v >= 1, ">= 1"))
        for name, value, ok, want in checks:
            if not ok(value):  # NaN fails every comparison
                raise ValueError(f"generation.{name} must be {want}, got {value!r}")


@dataclass(frozen=True)
class Vision:
    """Qwen2.5-VL recipes: the largest image area the artifact accepts (images are resized down to it, keeping their
    aspect ratio); None = edgeqwen's device default (448x448 = 256 image tokens)."""

    max_pixels: int | None = None

    def __post_init__(self):
        if self.max_pixels is not None and not 28 * 28 * 4 <= self.max_pixels <= 28 * 28 * 16384:
            raise ValueError(f"vision.max_pixels {self.max_pixels} is outside [3136, 12845056] (the model's own range)")


@dataclass(frozen=True)
class Accuracy:
    """Gate: the build fails when a set threshold is missed (None = not gated)."""

    max_ppl_ratio: float | None = None
    max_kld: float | None = None
    max_kld_p99: float | None = None
    min_top1: float | None = None
    # a shortlist head (quantization.lm_head_shortlist): the share of positions whose full-head top-1 is among its
    # candidates; its own top-1 meets min_top1 too
    min_shortlist_recall: float | None = 0.99
    window: int = 512
    max_windows: int = 8

    def __post_init__(self):
        for name in ("max_ppl_ratio", "max_kld", "max_kld_p99", "min_top1", "min_shortlist_recall"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"accuracy.{name} must be a finite number >= 0, got {value!r}")
        for name in ("min_top1", "min_shortlist_recall"):
            if getattr(self, name) is not None and getattr(self, name) > 1:
                raise ValueError(f"accuracy.{name} is a share in [0, 1], got {getattr(self, name)!r}")
        if self.window < 2 or self.max_windows < 1:
            raise ValueError(f"accuracy.window must be >= 2 and max_windows >= 1 (got {self.window}, {self.max_windows})")

    def thresholds(self) -> dict[str, float]:
        """The gate's set thresholds (evaluation settings such as window sizes are not thresholds)."""
        names = ("max_ppl_ratio", "max_kld", "max_kld_p99", "min_top1")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}


@dataclass(frozen=True)
class Recipe:
    version: int
    model: str  # hub id, local folder, or embedded:NAME
    target: str
    precision: Precision
    description: str = ""
    exporter: Exporter = Exporter.BUILDER
    context_length: int = 4096
    kv_cache: KvCache | None = None  # fp32 or fp16 (half the cache's memory: export/kv_fp16.py); None = the target's
    quantization: Quantization = field(default_factory=Quantization)
    generation: Generation = field(default_factory=Generation)
    accuracy: Accuracy = field(default_factory=Accuracy)
    vision: Vision = field(default_factory=Vision)
    name: str = ""  # filled from the file path

    def __post_init__(self):
        if self.version != SCHEMA_VERSION:
            raise ValueError(f"recipe schema version {self.version} is not supported (this edgeqwen reads {SCHEMA_VERSION})")
        if not 16 <= self.context_length <= MAX_CONTEXT:
            raise ValueError(f"context_length {self.context_length} is outside [16, {MAX_CONTEXT}] (the KV cache is "
                             "preallocated at it; the build caps it at the model's own maximum)")
        spec = self.quantization.spec
        if self.precision.value in ("int4", "int8") and self.precision.value not in spec.precisions:
            raise ValueError(f"quantization.algorithm {spec.name} is for {'/'.join(spec.precisions)} recipes (this one "
                             f"is {self.precision.value}); use rtn for int8 (its error is already ~20x smaller)")


@dataclass(frozen=True)
class Resolved:
    """A recipe with its target loaded and target defaults filled in."""

    recipe: Recipe
    target: Target
    block_size: int
    accuracy_level: int
    kv_cache: KvCache = KvCache.FP32

    def as_dict(self) -> dict:
        return {
            "recipe": to_dict(self.recipe),
            "target": to_dict(self.target),
            "resolved": {"block_size": self.block_size, "accuracy_level": self.accuracy_level,
                         "kv_cache": self.kv_cache.value},
        }


def recipes_dir() -> Path:
    """The shipped recipes folder (see resources.py for where it lives in each kind of install)."""
    return shipped_dir("recipes")


def _recipe_files() -> dict[str, tuple[Path, Path]]:
    """name → (file, the root it was found under); a user's recipe with a shipped name wins."""
    found: dict[str, tuple[Path, Path]] = {}
    for root in search_dirs("recipes"):
        for p in sorted(root.glob("*/*.yaml")):
            if not p.name.startswith("_"):  # _model.yaml and other shared bases are not recipes
                found.setdefault(p.relative_to(root).with_suffix("").as_posix(), (p, root))
    return found


def known_recipes() -> list[str]:
    return sorted(_recipe_files())


def _merge(base: dict, child: dict) -> dict:
    out = dict(base)
    for key, value in child.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def read_recipe_data(path: Path, _seen: tuple = ()) -> dict:
    """A recipe file with its `extends:` chain applied: `extends: _model.yaml` (relative to the file) names shared
    defaults — the model, its generation settings — that the recipe's own keys override, mapping by mapping."""
    data = read_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise EdgeQwenError(f"extends must be a file name, got {parent!r}", where=file_key(path, "extends"),
                            hint="a path relative to the recipe file, e.g. extends: _model.yaml")
    base_path = (path.parent / parent).resolve()
    if base_path in _seen or base_path == path.resolve():
        raise EdgeQwenError(f"extends loops back to {base_path}", where=file_key(path, "extends"),
                            hint="a base file must not extend the recipe (or a file that does)")
    if not base_path.is_file():
        raise EdgeQwenError(f"extends names a file that does not exist: {base_path}", where=file_key(path, "extends"),
                            hint="a path relative to the recipe file, e.g. extends: _model.yaml")
    return _merge(read_recipe_data(base_path, _seen + (path.resolve(),)), data)


def _looks_like_path(name: str) -> bool:
    """A recipe file rather than a name: names are `<model>/<name>` (one `/`, no suffix)."""
    p = Path(name)
    return (p.suffix in (".yaml", ".yml") or p.is_absolute() or name.startswith((".", "~")) or "\\" in name
            or len(p.parts) > 2)


def recipe_path(name_or_path: str) -> Path:
    p = Path(name_or_path).expanduser()
    if p.suffix in (".yaml", ".yml") and p.is_file():
        return p
    if p.suffix in (".yaml", ".yml") and p.exists():
        raise EdgeQwenError(f"recipe path is not a file: {p}", where=str(p), hint="pass a .yaml file")
    hit = _recipe_files().get(name_or_path)
    if hit is not None:
        return hit[0]
    if _looks_like_path(name_or_path) or p.is_file():
        if p.is_file():
            raise EdgeQwenError(f"recipe file is not a .yaml file: {name_or_path}", where=str(p),
                                hint="recipes are YAML files ending in .yaml or .yml")
        folder = "" if p.parent.is_dir() else f" (nor is its folder {p.parent})"
        raise EdgeQwenError(f"recipe file not found: {name_or_path}{folder}", where=str(p.absolute()),
                            hint="check the path; `edgeqwen recipes` lists the recipes you can name instead")
    close = difflib.get_close_matches(name_or_path, list(_recipe_files()), n=3, cutoff=0.6)
    raise EdgeQwenError(
        f"unknown recipe {name_or_path!r}" + (f"; did you mean {' or '.join(close)}?" if close else ""),
        where=", ".join(str(d) for d in search_dirs("recipes")),
        hint="`edgeqwen recipes` lists them; or pass a path to a .yaml file (add your own folder with --recipes DIR "
        "or EDGEQWEN_RECIPES)",
    )


def load_recipe(name_or_path: str) -> Resolved:
    path = recipe_path(name_or_path)
    data = read_recipe_data(path)
    recipe = load_file_schema(Recipe, data, path)
    # a file outside the recipe folders: its model folder's name too where it is laid out as one (a _model.yaml
    # beside it), so `build ./mine/qwen2.5-0.5b-instruct/cpu.yaml` is not named just "cpu"
    name = f"{path.parent.name}/{path.stem}" if (path.parent / "_model.yaml").is_file() else path.stem
    for root in search_dirs("recipes"):
        try:
            name = path.resolve().relative_to(root.resolve()).with_suffix("").as_posix()
            break
        except ValueError:
            continue
    recipe = dataclasses.replace(recipe, name=name)
    try:
        target = load_target(recipe.target)
    except EdgeQwenError as exc:
        if not exc.what.startswith("unknown target"):
            raise  # the target file's own error (naming that file), or a bad --targets folder (naming the flag)
        raise EdgeQwenError(exc.what, where=file_key(path, "target"), hint=exc.hint) from None
    if recipe.precision not in target.precisions:
        raise EdgeQwenError(
            f"precision {recipe.precision.value!r} is not supported by target {target.name!r}",
            where=file_key(path, "precision"),
            hint=f"{target.name} supports: {', '.join(p.value for p in target.precisions)}",
        )
    q = recipe.quantization
    kv_cache = recipe.kv_cache or target.kv_cache
    builder_cpu = target.execution_provider == ExecutionProvider.CPU and recipe.exporter == Exporter.BUILDER
    if kv_cache == KvCache.FP16 and (not builder_cpu or target.static_shapes):
        raise EdgeQwenError(
            f"kv_cache fp16 is for the CPU execution provider's builder graphs (target {target.name}, exporter "
            f"{recipe.exporter.value}): it casts around their GroupQueryAttention nodes",
            where=file_key(path, "kv_cache"),
            hint="drop kv_cache (GPU and WebGPU fp16 graphs keep their KV in fp16 already), or use a cpu-* target "
                 "with the builder exporter")
    return Resolved(
        recipe=recipe,
        target=target,
        block_size=q.block_size or target.int4_block_size,
        accuracy_level=target.int4_accuracy_level if q.accuracy_level is None else q.accuracy_level,
        kv_cache=kv_cache,
    )
