"""Recipe overrides → exact per-node settings, checked against the model's real node names.

Override keys are node-name globs, e.g. `'*/mlp/down_proj/MatMul'`, and may state intent instead of one
model's layer numbers: `{first}`, `{last}`, `{first+N}`, `{last-N}` become layer indices of the model at
hand, so `'/model/layers.{last}/*'` means the last decoder layer of a 4-layer fixture and of a 28-layer
Qwen alike. A glob that matches no node is an error naming it and the model's layers.
"""

from __future__ import annotations

import fnmatch
import re

from ..errors import EdgeQwenError

_INTENT = re.compile(r"\{(first|last)([+-]\d+)?\}")


def expand_intent(pattern: str, num_layers: int, where: str) -> str:
    def sub(m: re.Match) -> str:
        base = 0 if m.group(1) == "first" else num_layers - 1
        index = base + int(m.group(2) or 0)
        if not 0 <= index < num_layers:
            raise EdgeQwenError(f"override {pattern!r}: {m.group(0)} is layer {index}, outside this model's "
                                f"{num_layers} layers (0-{num_layers - 1})", where=where,
                                hint="use {first}, {last}, {first+N} or {last-N} within the model's layers")
        return str(index)

    expanded = _INTENT.sub(sub, pattern)
    if "{" in expanded or "}" in expanded:
        raise EdgeQwenError(f"override {pattern!r}: unknown placeholder", where=where,
                            hint="placeholders: {first}, {last}, {first+N}, {last-N}")
    return expanded


def expand_overrides(overrides: dict[str, dict], nodes: list[str], num_layers: int, where: str
                     ) -> tuple[dict[str, dict], list[tuple[str, int]]]:
    """{glob: entry} → ({node: merged entry}, [(glob, nodes matched)]). Later globs win on the same field."""
    settings: dict[str, dict] = {}
    matched: list[tuple[str, int]] = []
    for pattern, entry in overrides.items():
        glob = expand_intent(pattern, num_layers, where)
        hits = [n for n in nodes if fnmatch.fnmatchcase(n, glob)]
        if not hits:
            raise EdgeQwenError(
                f"override {pattern!r} matches no node of this model ({num_layers} decoder layers: "
                f"/model/layers.0 … /model/layers.{num_layers - 1}; nodes look like {nodes[0]!r} and {nodes[-1]!r})",
                where=where, hint="fix the glob, or state intent with /model/layers.{first}/* or /model/layers.{last}/*")
        for n in hits:
            settings[n] = {**settings.get(n, {}), **entry}
        matched.append((pattern, len(hits)))
    return settings, matched
