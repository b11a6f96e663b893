"""What a quantizer is asked to do: the typed request the build hands it (quantizers never import the planner).

`NodeSetting` is one MatMul's bits / block / scheme where it differs from the request's default (fields left None
take the default); `QuantRequest.node_setting(node)` gives a node's full setting. The planner makes both.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from pathlib import Path


class Scheme(str, enum.Enum):
    SYM = "sym"  # no zero points
    ASYM = "asym"  # a zero point per block


@dataclass(frozen=True)
class NodeSetting:
    bits: int | None = None
    group_size: int | None = None
    scheme: Scheme | None = None

    def over(self, base: "NodeSetting") -> "NodeSetting":
        """`base` with this setting's own (non-None) fields on top."""
        return replace(base, **{f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None})

    def as_dict(self) -> dict:
        """The set fields as plain values ({"bits": 8, "scheme": "sym"}): the quantizers' and builder's vocabulary."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        if "scheme" in out:
            out["scheme"] = out["scheme"].value
        return out

    @classmethod
    def from_entry(cls, entry: dict) -> "NodeSetting":
        """From {bits?, group_size?, scheme?} (recipe overrides, the mixed-precision choice)."""
        unknown = set(entry) - {"bits", "group_size", "scheme"}
        if unknown:
            raise KeyError(f"unknown node setting {sorted(unknown)}; known: bits, group_size, scheme")
        return cls(entry.get("bits"), entry.get("group_size"),
                   Scheme(entry["scheme"]) if entry.get("scheme") is not None else None)


@dataclass(frozen=True)
class QuantRequest:
    """Which MatMuls to quantize and how: a default (bits, block, symmetric) and per-node settings on top."""

    architecture: str  # registered HF class (module ↔ node mapping)
    bits: int | None  # decoder-layer default (None: float)
    block_size: int
    symmetric: bool
    accuracy_level: int = 0  # MatMulNBits' activation precision on the CPU EP (4: int8)
    node_settings: dict[str, NodeSetting] = field(default_factory=dict)

    @property
    def default(self) -> NodeSetting:
        return NodeSetting(self.bits, self.block_size, Scheme.SYM if self.symmetric else Scheme.ASYM)

    def node_setting(self, node: str) -> NodeSetting:
        return self.node_settings.get(node, NodeSetting()).over(self.default)


@dataclass(frozen=True)
class CheckpointRequest:
    """A calibrated quantizer's job on the PyTorch checkpoint (GPTQ, AutoRound): the weights' settings, the model,
    the calibration text and budget, and a work folder. It answers with the quantized checkpoint folder, a record for
    the manifest and notes as (code, message) pairs."""

    quant: QuantRequest
    model: Path
    work: Path
    calibration_text: Path | None  # None: the packaged text
    samples: int
    seq_len: int
    damp_percent: float = 0.01  # GPTQ's Hessian dampening
    iters: int = 200  # AutoRound's optimization steps per decoder layer
