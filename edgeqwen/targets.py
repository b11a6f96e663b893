"""Device profiles (targets/*.yaml): execution provider, precisions, int4 defaults, memory budget."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgeQwenError
from .runtime.runner import EXECUTION_PROVIDERS
from .resources import search_dirs, shipped_dir
from .schema import file_key, load_file_schema, read_yaml

SCHEMA_VERSION = 1


class Precision(str, enum.Enum):
    INT4 = "int4"
    INT8 = "int8"
    FP16 = "fp16"
    FP32 = "fp32"


class ExecutionProvider(str, enum.Enum):
    CPU = "cpu"
    CUDA = "cuda"
    WEBGPU = "webgpu"
    DML = "dml"
    QNN = "qnn"  # Qualcomm NPUs (Hexagon HTP) through onnxruntime's QNN execution provider
    OPENVINO = "openvino"  # Intel CPUs/GPUs/NPUs through onnxruntime-openvino


@dataclass(frozen=True)
class ProviderSpec:
    """What the rest of edgeqwen needs to know about an execution provider."""

    ort_name: str  # onnxruntime's provider name
    device: str  # Olive's accelerator device
    builder_ep: str  # onnxruntime-genai builder's -e value
    runs_here: bool = False  # this package's onnxruntime/onnxruntime-genai wheels include it


def _ort(key: str) -> str:
    return EXECUTION_PROVIDERS[key].ort_name  # the runner's table (it also names each provider's wheel)


PROVIDERS: dict[ExecutionProvider, ProviderSpec] = {
    ExecutionProvider.CPU: ProviderSpec(_ort("cpu"), "cpu", "cpu", runs_here=True),
    ExecutionProvider.CUDA: ProviderSpec(_ort("cuda"), "gpu", "cuda"),
    ExecutionProvider.WEBGPU: ProviderSpec(_ort("webgpu"), "gpu", "webgpu"),
    ExecutionProvider.DML: ProviderSpec(_ort("dml"), "gpu", "dml"),
    ExecutionProvider.QNN: ProviderSpec(_ort("qnn"), "npu", "qnn"),
    ExecutionProvider.OPENVINO: ProviderSpec(_ort("openvino"), "cpu", "cpu"),  # the builder has no -e openvino
}
assert set(PROVIDERS) == set(ExecutionProvider), "every execution provider needs a ProviderSpec"


class WeightEncoding(str, enum.Enum):
    MATMULNBITS = "matmulnbits"  # com.microsoft MatMulNBits / GatherBlockQuantized (onnxruntime CPU/GPU kernels)
    QDQ = "qdq"  # standard DequantizeLinear(int8 weight, per-channel scale) → MatMul/Gather, as NPU compilers take


class KvCache(str, enum.Enum):
    """The KV cache's element type on an fp32 (CPU-layout) graph: fp32, or fp16 — half the cache's memory, attention
    computed in fp16 (export/kv_fp16.py)."""

    FP32 = "fp32"
    FP16 = "fp16"


class ArtifactFormat(str, enum.Enum):
    ONNX = "onnx"  # model.onnx + model.onnx.data (onnxruntime, onnxruntime-genai, Foundry Local)
    ORT = "ort"  # model.ort flatbuffer + required_operators.config for a minimal onnxruntime build


@dataclass(frozen=True)
class Target:
    version: int
    name: str
    description: str
    execution_provider: ExecutionProvider
    isa: str
    precisions: tuple[Precision, ...]
    int4_block_size: int = 32
    int4_accuracy_level: int = 4
    memory_budget_mb: int = 8192
    intra_op_threads: int = 0
    artifact_format: ArtifactFormat = ArtifactFormat.ONNX
    ort_target_platform: str = "arm"  # ORT-format conversion: graph optimizations for arm or amd64
    weight_encoding: WeightEncoding = WeightEncoding.MATMULNBITS
    static_shapes: bool = False  # every graph dim fixed: batch 1, one token per step, KV of context - 1 slots
    serve_max_batch: int = 4  # `edgeqwen serve`: sequences decoded together per step (continuous batching)
    # decoding's lm_head as a shortlist of this many candidates where the head is a large share of a token's bytes
    # (export/shortlist_head.py; CPU execution provider only); 0 = the full head. A recipe's quantization.lm_head_shortlist wins
    lm_head_shortlist: int = 0
    # the bits of the shortlist's ranking copy (export/ranking_quant.py): 2 halves its read again; where its candidates
    # miss the recall bar the accuracy stage requantizes it to 4. A recipe's quantization.lm_head_shortlist_bits wins
    lm_head_shortlist_bits: int = 4
    # what zero points cost this target's MatMulNBits kernel: the extra time of a matrix with a zero point per block over
    # the same matrix symmetric, as a share (0.05 = 5 % slower; benchmarks/zero_point_cost.py measures it). A recipe's
    # `mixed_precision.zero_points: auto` prices them with it; None: not measured, zero points are kept
    int4_zero_point_cost: float | None = None
    # WebGPU only: true = fp16 activations and KV (the builder's WebGPU layout), which needs adapters with the
    # `shader-f16` feature; false = fp32 activations (the CPU layout), which every WebGPU adapter runs
    shader_f16: bool | None = None
    # KV cache layout the runtime feeds: true = one buffer bound as both past and present (GroupQueryAttention in
    # place, the native runner's default); false = the present comes back one position longer each step and is fed
    # as the next past (what onnxruntime-web runs; genai_config's past_present_share_buffer says which)
    kv_in_place: bool = True
    # the KV cache's type on this target's fp32 graphs (export/kv_fp16.py): fp16 halves its memory, at a speed cost
    # where the CPU has no fp16 arithmetic (x86: attention 1.3-2.1x slower). A recipe's `kv_cache` wins
    kv_cache: KvCache = KvCache.FP32
    # browser artifacts: the artifact carries web/ (page + onnxruntime-web + transformers.js) and no file the page
    # fetches may exceed this many MB (browsers cap one ArrayBuffer/fetch; CDNs cap one file). None: no web page
    web_max_file_mb: int | None = None

    def __post_init__(self):
        if self.version != SCHEMA_VERSION:
            raise ValueError(f"target schema version {self.version} is not supported (this edgeqwen reads {SCHEMA_VERSION})")
        if self.int4_block_size not in (16, 32, 64, 128, 256):
            raise ValueError(f"int4_block_size {self.int4_block_size} must be one of 16, 32, 64, 128, 256")
        if not 1 <= self.serve_max_batch <= 64:
            raise ValueError(f"serve_max_batch {self.serve_max_batch} must be 1-64")
        if not 0 <= self.lm_head_shortlist <= 4096:
            raise ValueError(f"lm_head_shortlist {self.lm_head_shortlist} must be 0-4096")
        if self.lm_head_shortlist_bits not in (2, 4):
            raise ValueError(f"lm_head_shortlist_bits {self.lm_head_shortlist_bits} must be 2 or 4")
        if self.lm_head_shortlist and self.execution_provider != ExecutionProvider.CPU:
            raise ValueError("lm_head_shortlist is for the CPU execution provider (its TopK/ScatterElements head is "
                             "measured there only)")
        if self.int4_zero_point_cost is not None and not 0 <= self.int4_zero_point_cost < 1:
            raise ValueError(f"int4_zero_point_cost {self.int4_zero_point_cost} must be in [0, 1) (a matrix's extra "
                             "time with zero points, as a share)")
        if self.int4_accuracy_level not in (0, 1, 2, 3, 4):
            raise ValueError(f"int4_accuracy_level {self.int4_accuracy_level} must be 0-4")
        if self.ort_target_platform not in ("arm", "amd64"):
            raise ValueError(f"ort_target_platform {self.ort_target_platform!r} must be arm or amd64")
        if self.weight_encoding == WeightEncoding.QDQ and set(self.precisions) - {Precision.INT8, Precision.FP32}:
            raise ValueError("weight_encoding qdq is written for int8 (per-channel) weights: precisions int8/fp32 only")
        if self.artifact_format == ArtifactFormat.ORT and self.execution_provider != ExecutionProvider.CPU:
            raise ValueError("artifact_format ort is for the CPU execution provider of a minimal onnxruntime build")
        if (self.shader_f16 is None) != (self.execution_provider != ExecutionProvider.WEBGPU):
            raise ValueError("shader_f16 (true: fp16 graphs for adapters with shader-f16; false: fp32 graphs for every "
                             "adapter) is required for the webgpu execution provider and only there")

        if self.web_max_file_mb is not None and (self.execution_provider != ExecutionProvider.WEBGPU or self.shader_f16
                                                 or self.int4_accuracy_level != 0 or self.kv_in_place):
            raise ValueError("a web target (web_max_file_mb) runs in onnxruntime-web: execution_provider webgpu with "
                             "shader_f16 false, int4_accuracy_level 0 (the browser computes fp32) and kv_in_place false")
        if self.web_max_file_mb is not None and not 1 <= self.web_max_file_mb <= 2047:
            raise ValueError(f"web_max_file_mb {self.web_max_file_mb} must be 1-2047 (a browser ArrayBuffer is < 2 GiB)")

    @property
    def graph_ep(self) -> str:
        """The graph layout the exporter writes (the builder's -e): the provider's own, except WebGPU without
        shader-f16, which takes the CPU layout (fp32 activations and KV; int4 MatMulNBits that WebGPU also runs)."""
        if self.execution_provider == ExecutionProvider.WEBGPU and not self.shader_f16:
            return ExecutionProvider.CPU.value
        return PROVIDERS[self.execution_provider].builder_ep

    @property
    def fp32_graph(self) -> bool:
        """The graph keeps fp32 activations, inputs/outputs and quantization scales: the CPU layout (CPU, OpenVINO,
        WebGPU without shader-f16) and the QNN graphs here (the NPU's compiler quantizes them itself); the GPU layouts
        are fp16. The one rule the planner, the portable exporter's check and the memory estimate read."""
        return self.graph_ep in (ExecutionProvider.CPU.value, ExecutionProvider.QNN.value)


def targets_dir() -> Path:
    """The shipped targets folder (see resources.py for where it lives in each kind of install)."""
    return shipped_dir("targets")


def _target_files() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for root in search_dirs("targets"):
        for p in sorted(root.glob("*.yaml")):
            found.setdefault(p.stem, p)  # a user's target with a shipped name wins
    return found


def known_targets() -> list[str]:
    return sorted(_target_files())


def load_target_file(path: Path) -> Target:
    target = load_file_schema(Target, read_yaml(path), path)
    if target.name != path.stem:
        raise EdgeQwenError(f"target name {target.name!r} does not match its file name", where=file_key(path, "name"),
                            hint=f"name: {path.stem}, or rename the file to {target.name}.yaml")
    return target


def load_target(name: str) -> Target:
    path = _target_files().get(name)
    if path is None:
        raise EdgeQwenError(
            f"unknown target {name!r}", where=", ".join(str(d) for d in search_dirs("targets")),
            hint=f"known targets: {', '.join(known_targets())}",
        )
    return load_target_file(path)
