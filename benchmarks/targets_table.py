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


# where each target's artifacts ran on their own kernels (the device checks: .ci/device_*.sh, pytest -m device)
PROVEN_ON = {
    "cpu-x86_64": "x86-64 CPU EP: AVX-512 natively, AVX2 under qemu-x86_64 -cpu Haswell (batched vs lone)",
    "cpu-arm64": "aarch64 CPU EP (onnxruntime 1.32 under qemu-aarch64 10): run, verify, serve; logits within 0.25 of x86",
    "ort-mobile": "aarch64 CPU EP (onnxruntime 1.32, model.ort's writer, under qemu-aarch64 10): run, verify, serve; "
                  "logits within 0.25 of x86",
    "webgpu-fp32": "WebGPU EP (onnxruntime-webgpu 1.27.0, SwiftShader, no shader-f16): greedy text = CPU, logits 9e-6",
    "webgpu": "built, not run on its EP: needs a shader-f16 adapter (SwiftShader has none)",
    "openvino-cpu": "OpenVINO EP (onnxruntime-openvino 1.24.1, x86 CPU): greedy text = CPU provider, logits 1e-5",
    "cuda": "built, not run on its EP (no GPU here)",
    "qnn-npu": "built, not run on its EP (no Qualcomm NPU here)",
}


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
    rows = ["| recipe | exporter / algorithm | size MB | mean KLD (CPU EP) | operators | ran here | proven on |",
            "|---|---|---|---|---|---|---|"]
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
            proven = PROVEN_ON.get(r.target.name, "built, not run on its EP")
            rows.append(f"| {name.split('/')[1]} | {how} | {size:.2f} | {acc['kld_mean']:.4f} | {ops_of(out)} | {ran} | "
                        f"{proven} |")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
