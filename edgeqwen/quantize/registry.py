"""The quantization-algorithm registry: one declarative spec per algorithm, read by every consumer.

The recipe schema, the planner, the build's calibrate stage, the exporter workers, `tune`'s grid,
`olive-config`, the memory estimate and the manifest all read `AlgorithmSpec`s from here instead of
comparing names. Adding an algorithm is one module in `edgeqwen/quantize/algorithms/` that calls
`register(...)`, plus its test. Unknown or duplicate names raise with the known ones listed.

Where an algorithm runs (`stage`):
- "builder":    onnxruntime-genai's builder quantizes (its `int4_algo_config`), edgeqwen's hook adds overrides.
- "graph":      edgeqwen's hook quantizes the exported graph itself (`graph_quantizer`, or `block_quantizer` inside
                the shared MatMul-by-MatMul quantizer), on the builder's and the portable exporter's graphs alike.
- "checkpoint": calibrated, on the PyTorch checkpoint before export (`checkpoint_quantizer`); the builder
                imports the packed weights.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Callable

STAGES = ("builder", "graph", "checkpoint")


@dataclass(frozen=True)
class OliveMapping:
    """How `olive-config` expresses the algorithm: an Olive pass before ModelBuilder, or why it cannot."""

    pre_pass: str | None = None  # e.g. "Gptq"; None: ModelBuilder's own quantizer
    refuse: str | None = None  # set when Olive has no equivalent: the nearest one, for the error's hint


@dataclass(frozen=True)
class TuneCandidate:
    label: str
    settings: dict  # overrides of recipe.quantization


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    summary: str
    stage: str
    precisions: tuple[str, ...] = ("int4", "int8")  # recipe precisions it can quantize
    builder_algo: str = "rtn"  # what the builder is told (it wires the shared lm_head/table by this name)
    takes_overrides: bool = True  # per-node bits/block/symmetry (mixed precision)
    asym_reason: str | None = None  # set when it always writes zero points: the plan makes the recipe asymmetric
    float_zero_points: bool = False  # zero points stored as float (larger; a slower onnxruntime kernel)
    head_bits: int | None = None  # the lm_head bit width it always writes, whatever the recipe says
    whole_groups: bool = False  # needs every K to be a whole number of blocks (else the plan falls back to rtn)
    low_memory: str = "rtn"  # the algorithm the low-memory path runs instead (itself when it supports it)
    portable: bool = False  # runs on the portable exporter's graph
    calibration: bool = False  # takes calibration text (`--calib`, quantization.calibration)
    cache_package: str | None = None  # the package whose version keys a cached calibrated result
    checkpoint_quantizer: str | None = None  # "module:function" for stage "checkpoint"
    graph_quantizer: str | None = None  # "module:function(model, plan, skip, notes) -> model" for stage "graph"
    block_quantizer: str | None = None  # "module:function(w, bits, block, symmetric)" for the shared quantizer
    extra: str | None = None  # the install extra it needs beyond the build stack (edgeqwen/extras.py)
    notes: tuple[str, ...] = ()  # recorded in every plan that uses it (known costs, measured limits)
    olive: OliveMapping = field(default_factory=OliveMapping)
    tune: tuple[TuneCandidate, ...] = ()

    def __post_init__(self):
        if self.stage not in STAGES:
            raise ValueError(f"algorithm {self.name}: stage {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.stage == "checkpoint" and not self.checkpoint_quantizer:
            raise ValueError(f"algorithm {self.name}: stage checkpoint needs a checkpoint_quantizer")
        if self.stage == "graph" and not (self.graph_quantizer or self.block_quantizer):
            raise ValueError(f"algorithm {self.name}: stage graph needs a graph_quantizer or block_quantizer")


_REGISTRY: dict[str, AlgorithmSpec] = {}
_BUILTINS_LOADED = False


def register(spec: AlgorithmSpec) -> AlgorithmSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"quantization algorithm {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load() -> None:
    """The built-in algorithms register on first use (a plugin registered earlier does not stop them)."""
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        _BUILTINS_LOADED = True
        importlib.import_module("edgeqwen.quantize.algorithms")


def algorithm_names() -> list[str]:
    _load()
    return list(_REGISTRY)


def algorithms() -> list[AlgorithmSpec]:
    _load()
    return list(_REGISTRY.values())


def get_algorithm(name: str) -> AlgorithmSpec:
    _load()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown quantization algorithm {name!r}; known: {', '.join(_REGISTRY)}") from None


def resolve_callable(ref: str) -> Callable:
    """"package.module:function" → the function (imported only when used: heavy stacks stay unloaded)."""
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)
