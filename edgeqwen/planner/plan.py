"""The build plan as a value: made once by `planner.plan()`, read by the memory estimate, the calibrate stage,
the exporter workers (serialized), `olive-config` and the manifest. Nothing mutates it after it is made."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from ..architectures import HEAD_NODE


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


@dataclass(frozen=True)
class TablePlan:
    """The embedding table: shared with a quantized lm_head (tied models), quantized on its own, or float."""

    mode: str  # "shared" | "separate" | "float"
    bits: int | None = None
    block_size: int | None = None


@dataclass(frozen=True)
class ExportPlan:
    recipe: str
    architecture: str
    exporter: str  # "builder" | "portable"
    precision: str  # the recipe's: int4 | int8 | fp16 | fp32
    algorithm: str  # what really runs ("none" for float precisions); may differ from the recipe's (see decisions)
    execution_provider: str
    matmul_bits: int | None  # decoder-layer default (None: float)
    block_size: int
    symmetric: bool
    accuracy_level: int
    head: HeadPlan
    table: TablePlan
    node_settings: dict = field(default_factory=dict)  # exact node → {bits, group_size, scheme} where not the default
    exclude_nodes: tuple[str, ...] = ()  # MatMuls left float
    low_memory: bool = False
    context_length: int = 4096
    weight_encoding: str = "matmulnbits"
    static_shapes: bool = False
    num_layers: int = 0
    prune_head: bool = False  # logits for the last position only (+ lm_head.onnx over every position, for eval)
    mixed: dict = field(default_factory=dict)  # `mixed_precision: auto`: what was chosen and why (planner/mixed.py)
    vision: dict = field(default_factory=dict)  # Qwen2.5-VL: the encoder's bits and the image-size cap (empty: text only)
    graph_ep: str = ""  # the layout the exporter writes (builder -e); "" = execution_provider (plans made before it)
    shader_f16: bool | None = None  # WebGPU: the graph needs adapters with shader-f16 (None: not a WebGPU target)
    kv_in_place: bool = True  # false: present KV comes back one position longer and is fed as the next past
    web_max_file_mb: int | None = None  # a web artifact (web/ page): the largest file the page may fetch
    decisions: tuple[Decision, ...] = ()

    @property
    def quantized(self) -> bool:
        return self.matmul_bits is not None

    @property
    def needs_sensitivity(self) -> bool:
        """An auto mixed-precision plan made before its sensitivity measurement (planned at the base format)."""
        return bool(self.mixed.get("pending"))

    @property
    def builder_ep(self) -> str:
        return self.graph_ep or self.execution_provider

    @property
    def builder_precision(self) -> str:
        """onnxruntime-genai's precision flag: int8 weights are written through its int4 (MatMulNBits) path."""
        return "int4" if self.quantized else self.precision

    def node_setting(self, node: str) -> dict:
        """The full {bits, group_size, scheme} of one quantized MatMul."""
        entry = {"bits": self.matmul_bits, "group_size": self.block_size, "scheme": "sym" if self.symmetric else "asym"}
        if node == HEAD_NODE and self.head.bits is not None:
            entry.update(bits=self.head.bits, group_size=self.head.block_size)
        entry.update(self.node_settings.get(node, {}))
        return entry

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
        opts["shared_embeddings"] = self.table.mode == "shared" and not self.vision
        if self.prune_head:  # + the final norm's output, which the separate scoring head (lm_head.onnx) reads
            opts.update(prune_lm_head=True, include_hidden_states=True)
        return opts

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ExportPlan":
        data = dict(data)
        data["head"] = HeadPlan(**data["head"])
        data["table"] = TablePlan(**data["table"])
        data["exclude_nodes"] = tuple(data["exclude_nodes"])
        data["decisions"] = tuple(Decision(**d) for d in data["decisions"])
        return cls(**data)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)
