"""Target × precision → artifact size, operators, and where it ran, for the embedded tiny models.

    python benchmarks/targets_table.py [--family tiny-qwen2]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("EDGEQWEN_QUIET", "1")

from edgeqwen.build import BuildOptions, build  # noqa: E402
from edgeqwen.recipe import known_recipes, load_recipe  # noqa: E402


def ops_of(path: Path) -> str:
    if (path / "required_operators.config").exists():
        lines = [x for x in (path / "required_operators.config").read_text().splitlines() if x and not x.startswith("#")]
        return "; ".join(x.split(";")[-1] for x in lines)
    import onnx

    m = onnx.load(str(path / "model.onnx"), load_external_data=False)
    c = collections.Counter(n.op_type for n in m.graph.node)
    return ", ".join(f"{k}×{v}" for k, v in sorted(c.items()) if k not in ("Constant", "Shape", "Cast", "Reshape", "ReduceSum", "Sub"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--family", default="tiny-qwen2")
    args = ap.parse_args()
    rows = ["| recipe | exporter / algorithm | size MB | mean KLD (CPU EP) | operators | ran here |", "|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in known_recipes():
            if not name.startswith(args.family + "/"):
                continue
            r = load_recipe(name)
            out = build(BuildOptions(name, Path(tmp) / name.replace("/", "-")))
            acc = json.loads((out / "accuracy.json").read_text())
            size = json.loads((out / "manifest.json").read_text())["size_bytes"] / 1e6
            ep = r.target.execution_provider.value
            ran = "runner + onnxruntime-genai (CPU)" if ep == "cpu" else f"runner on the CPU provider ({ep} kernels not run)"
            how = f"{r.recipe.exporter.value} / {r.recipe.quantization.algorithm if r.recipe.precision.value in ('int4', 'int8') else '-'}"
            rows.append(f"| {name.split('/')[1]} | {how} | {size:.2f} | {acc['kld_mean']:.4f} | {ops_of(out)} | {ran} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
