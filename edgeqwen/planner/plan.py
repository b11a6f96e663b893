"""The build plan as a value: made once by `planner.plan()`, read by the memory estimate, the calibrate stage,
the exporter workers (serialized), `olive-config` and the manifest. Nothing mutates it after it is made.

Typed end to end: every field is a frozen dataclass, an enum or a plain value, in this process and in the exporter
workers alike — `ExportPlan.to_json()` / `ExportPlan.from_json()` are the one serialization (schema.to_dict /
schema.from_dict), round-trip tested."""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field

from ..architectures import HEAD_NODE
from ..quantize.request import NodeSetting, QuantRequest
from ..recipe import Exporter
from ..schema import from_dict, to_dict
from ..targets import ExecutionProvider, Precision, WeightEncoding


@dataclass(frozen=True)
class Decision:
    """One planning decision: a stable `code` (tests and tools match on it) and the sentence users read."""

    code: str
    message: str

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class HeadPlan:
    bits: int | None  # None: float lm_head
    block_size: int
    shortlist: int = 0  # decoding's head: a ranking copy ranks, this many int8 rows score (export/shortlist_head.py)
    shortlist_bits: int = 0  # its ranking copy's bits, 2 or 4 (export/ranking_quant.py; the accuracy stage may raise 2)


class TableMode(str, enum.Enum):
    SHARED = "shared"  # tied model: one quantized table read by the embedding Gather and the lm_head MatMul
    SEPARATE = "separate"  # quantized on its own (GatherBlockQuantized), apart from the lm_head
    FLOAT = "float"  # left in float
    ROWS = "rows"  # Qwen2.5-VL: int8 per row (one float scale each) in embedding.onnx; the decoder takes inputs_embeds


@dataclass(frozen=True)
class TablePlan:
    """The embedding table (see TableMode)."""

    mode: TableMode
    bits: int | None = None
    block_size: int | None = None


@dataclass(frozen=True)
class VisionPlan:
    """Qwen2.5-VL's image side: the encoder's linears (bits None: float), embedding.onnx's table, the image cap."""

    bits: int | None
    block: int
    int8_table: bool
    max_pixels: int


@dataclass(frozen=True)
class MixedPlan:
    """`mixed_precision: auto`: what was chosen and why (planner/mixed.py), or `pending` before the measurement."""

    pending: bool = False  # planned at the base format; the build measures sensitivity, then plans again
    target_kld: float | None = None  # the whole model's KLD target
    planned_kld: float | None = None  # predicted KLD of the choice, lm_head and table included
    layer_target_kld: float | None = None  # the decoder layers' share of the target
    head_table_kld: float | None = None  # measured KLD of the lm_head and an untied table, taken off the target
    sensitivity_key: str | None = None
    base: str | None = None  # e.g. "int4/b128"
    formats: tuple[str, ...] = ()  # the upgrade formats offered
    objective: str | None = None
    met: bool | None = None
    groups: int = 0  # decoder-layer matrix groups planned
    bits_per_weight: float | None = None
    base_bits_per_weight: float | None = None
    max_bits_per_weight: float | None = None
    cap_exceeded: bool = False
    capped_kld: float | None = None  # predicted KLD of the best plan within the cap (a soft cap gives way above the gate)
    gate_kld: float | None = None  # the accuracy gate's max_kld the soft cap is held against
    kld_scale: float = 1.0  # > 1 after a measured miss
    # `zero_points: auto`: the base is symmetric and "+zp" formats keep zero points, priced at this share more bytes
    zero_point_cost: float | None = None
    upgraded: dict[str, tuple[str, ...]] = field(default_factory=dict)  # format → "layers.N/kind" upgraded to it
    choice: dict[str, str] = field(default_factory=dict)  # "layers.N/kind" → format

    @property
    def active(self) -> bool:
        return self.pending or self.groups > 0 or self.target_kld is not None


@dataclass(frozen=True)
class ExportPlan:
    recipe: str
    architecture: str
    exporter: Exporter
    precision: Precision  # the recipe's
    algorithm: str  # what really runs ("none" for float precisions); may differ from the recipe's (see decisions)
    execution_provider: ExecutionProvider
    matmul_bits: int | None  # decoder-layer default (None: float)
    block_size: int
    symmetric: bool
    accuracy_level: int
    head: HeadPlan
    table: TablePlan
    node_settings: dict[str, NodeSetting] = field(default_factory=dict)  # exact node → what differs from the default
    exclude_nodes: tuple[str, ...] = ()  # MatMuls left float
    low_memory: bool = False
    calibration_samples: int | None = None  # sequences a calibrated quantizer reads (the recipe's, or fewer: gptq.tokens)
    context_length: int = 4096
    weight_encoding: WeightEncoding = WeightEncoding.MATMULNBITS
    static_shapes: bool = False
    num_layers: int = 0
    prune_head: bool = False  # logits for the last position only (+ lm_head.onnx over every position, for eval)
    mixed: MixedPlan = field(default_factory=MixedPlan)  # `mixed_precision: auto` (inactive: default)
    vision: VisionPlan | None = None  # Qwen2.5-VL's image side (None: text only)
    graph_ep: str = ""  # the layout the exporter writes (the builder's -e); "" = execution_provider's own
    shader_f16: bool | None = None  # WebGPU: the graph needs adapters with shader-f16 (None: not a WebGPU target)
    kv_in_place: bool = True  # false: present KV comes back one position longer and is fed as the next past
    kv_fp16: bool = False  # an fp32 graph's KV cache in fp16 (export/kv_fp16.py)
    web_max_file_mb: int | None = None  # a web artifact (web/ page): the largest file the page may fetch
    decisions: tuple[Decision, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.matmul_bits is not None

    @property
    def needs_sensitivity(self) -> bool:
        """An auto mixed-precision plan made before its sensitivity measurement (planned at the base format)."""
        return self.mixed.pending

    @property
    def builder_ep(self) -> str:
        return self.graph_ep or self.execution_provider.value

    @property
    def builder_precision(self) -> str:
        """onnxruntime-genai's precision flag: int8 weights are written through its int4 (MatMulNBits) path."""
        return "int4" if self.quantized else self.precision

    def quant_request(self) -> QuantRequest:
        """What a quantizer needs of this plan (quantizers never see the planner's types)."""
        head = NodeSetting(self.head.bits, self.head.block_size) if self.head.bits is not None else NodeSetting()
        settings = dict(self.node_settings)
        if self.head.bits is not None:
            settings[HEAD_NODE] = head.over(settings.get(HEAD_NODE, NodeSetting()))
        return QuantRequest(architecture=self.architecture, bits=self.matmul_bits, block_size=self.block_size,
                            symmetric=self.symmetric, accuracy_level=self.accuracy_level, node_settings=settings)

    def node_setting(self, node: str) -> NodeSetting:
        """The full setting (bits, group_size, scheme) of one quantized MatMul."""
        return self.quant_request().node_setting(node)

    def builder_options(self) -> dict:
        """The builder's `extra_options` for this plan (its own vocabulary: an int8 head is `<algo>_last`)."""
        from ..quantize.registry import get_algorithm

        opts: dict = {"hf_token": "false", "hf_remote": False}
        if self.vision:
            opts["exclude_embeds"] = True  # the decoder takes inputs_embeds; embedding.onnx merges the image features
        if not self.quantized:
            return opts
        builder_algo = get_algorithm(self.algorithm).builder_algo if self.algorithm != "none" else "rtn"
        head_int8 = self.head.bits == 8
        opts.update(int4_block_size=self.block_size, int4_is_symmetric=self.symmetric,
                    int4_accuracy_level=self.accuracy_level,
                    int4_algo_config=builder_algo + ("_last" if head_int8 else ""))
        if self.exclude_nodes:
            opts["int4_nodes_to_exclude"] = list(self.exclude_nodes)
        opts["shared_embeddings"] = self.table.mode == TableMode.SHARED and not self.vision
        if self.prune_head:  # + the final norm's output, which the separate scoring head (lm_head.onnx) reads
            opts.update(prune_lm_head=True, include_hidden_states=True)
        return opts

    def to_json(self) -> dict:
        """Plain JSON data (enums as their values); `from_json` restores the same typed value."""
        return to_dict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ExportPlan":
        return from_dict(cls, data, where="plan")

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)
