"""The oldest onnxruntime an artifact runs on, from the operators and attributes its graphs use.

Each rule was checked here against the onnxruntime wheels 1.20.1, 1.21.1, 1.22.0, 1.22.1 and 1.23.0 (their operator
schemas, `onnxruntime.capi.onnxruntime_pybind11_state.get_all_operator_schema()`, and loading the tiny artifacts).
Anything the table does not know — an operator of another domain, an attribute added later, a newer opset or IR
version — counts as needing the onnxruntime that built the artifact: the floor is never lower than what was checked.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TESTED_FLOOR = "1.20.1"  # the oldest wheel the rules were checked against


@dataclass(frozen=True)
class OpRule:
    domain: str
    op: str
    attributes: frozenset[str]  # what TESTED_FLOOR's schema accepts
    later: tuple[tuple[str, str, str], ...] = ()  # (attribute, first version that accepts it, evidence)


# com.microsoft operators the exporters write, as onnxruntime 1.20.1 declares them, and attributes added since
CONTRIB_OPS = {r.op: r for r in (
    OpRule("com.microsoft", "GatherBlockQuantized", frozenset({"block_size", "gather_axis", "quantize_axis"}),
           (("bits", "1.23.0", "1.22.1: 'Unrecognized attribute: bits for operator GatherBlockQuantized'"),)),
    OpRule("com.microsoft", "GroupQueryAttention",
           frozenset({"do_rotary", "kv_num_heads", "local_window_size", "num_heads", "rotary_interleaved", "scale",
                      "smooth_softmax", "softcap"}),
           (("qk_output", "1.23.0", "absent from 1.22.1's schema"),)),
    OpRule("com.microsoft", "MatMulNBits", frozenset({"K", "N", "accuracy_level", "bits", "block_size"})),
    OpRule("com.microsoft", "SkipSimplifiedLayerNormalization", frozenset({"epsilon"})),
    OpRule("com.microsoft", "SkipLayerNormalization", frozenset({"epsilon"})),
    OpRule("com.microsoft", "RotaryEmbedding",
           frozenset({"interleaved", "is_packed_batching", "num_heads", "rotary_embedding_dim", "scale"})),
    OpRule("com.microsoft", "QuickGelu", frozenset({"alpha"})),
)}
# attribute values whose kernels came later than the operator
VALUE_RULES = (
    ("MatMulNBits", "bits", 8, "1.22.0", "1.21.1: 'Only 4b quantization is supported for MatMulNBits op'"),
)
# the default ONNX domain: the newest opset each onnxruntime implements (its schemas' highest since_version)
ONNX_OPSET = ((21, "1.20.1"), (22, "1.21.1"), (23, "1.23.0"))
MAX_IR = 10  # IR version 10 loads from 1.20.1 on (checked); newer ones count as the building onnxruntime's


def vkey(v: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in p if c.isdigit()) or 0) for p in (v.split(".") + ["0", "0"])[:3])


@dataclass
class Floor:
    version: str
    reasons: list[str]

    def need(self, version: str, why: str) -> None:
        if vkey(version) > vkey(self.version):
            self.version, self.reasons = version, [why]
        elif vkey(version) == vkey(self.version) and why not in self.reasons:
            self.reasons.append(why)


def _node_floor(node, floor: Floor, built_with: str) -> None:
    if node.domain in ("", "ai.onnx"):
        return
    rule = CONTRIB_OPS.get(node.op_type) if node.domain == "com.microsoft" else None
    if rule is None:
        floor.need(built_with, f"{node.domain}.{node.op_type}: not in edgeqwen's table")
        return
    later = {a: (v, why) for a, v, why in rule.later}
    for attr in node.attribute:
        if attr.name in later:
            floor.need(later[attr.name][0], f"{node.op_type} attribute {attr.name} ({later[attr.name][1]})")
        elif attr.name not in rule.attributes:
            floor.need(built_with, f"{node.op_type} attribute {attr.name}: not in edgeqwen's table")
    for op, name, value, version, why in VALUE_RULES:
        if node.op_type == op and any(a.name == name and a.i == value for a in node.attribute):
            floor.need(version, f"{op} {name}={value} ({why})")


def model_floor(path: Path, built_with: str, floor: Floor | None = None) -> Floor:
    """The floor of one .onnx file (graph only: external data is not read)."""
    import onnx

    floor = floor or Floor(TESTED_FLOOR, [f"oldest onnxruntime checked ({TESTED_FLOOR})"])
    model = onnx.load(str(path), load_external_data=False)
    if model.ir_version > MAX_IR:
        floor.need(built_with, f"{path.name}: ONNX IR version {model.ir_version}")
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            version = next((v for o, v in ONNX_OPSET if imp.version <= o), built_with)
            floor.need(version, f"{path.name}: ONNX opset {imp.version}")
    graphs = [model.graph, *(f for f in model.functions)]
    for g in graphs:
        for node in g.node:
            _node_floor(node, floor, built_with)
    return floor


def artifact_floor(folder: Path, built_with: str, ort_format: bool = False) -> Floor:
    """The floor over every .onnx graph in an artifact folder; an ORT-format artifact (model.ort written by
    `built_with`) needs that onnxruntime itself: the ORT format stores every attribute the writer's schemas give a
    default, which older readers refuse (a model.ort from 1.32.0 carries MatMulNBits `weight_prepacked`; 1.24.4, 1.26.0
    and 1.27.0 refuse it, checked)."""
    floor = Floor(TESTED_FLOOR, [f"oldest onnxruntime checked ({TESTED_FLOOR})"])
    for path in sorted(Path(folder).glob("*.onnx")):
        model_floor(path, built_with, floor)
    if ort_format:
        floor.need(built_with, f"model.ort written by onnxruntime {built_with} (the ORT format stores the writer's "
                   "default attributes, e.g. MatMulNBits weight_prepacked, which 1.27.0 refuses)")
    return floor
