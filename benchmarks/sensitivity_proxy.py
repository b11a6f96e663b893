"""The bounded sensitivity proxy against the full measurement, on trained models.

    python benchmarks/sensitivity_proxy.py [--models tiny-qwen2,tiny-qwen3,holdout-qwen2-6l,holdout-qwen3-3l]

For each trained model (the embedded tiny ones and the held-out shapes, `edgeqwen/train.py`), the reference is the
per-matrix measurement (every matrix's KLD measured by a rerun); the rows are the per-layer measurement and the proxy
with a rerun budget that pays for every layer, about half of them, and only the first and last. Printed: the
log-correlation of each matrix's KLD with the reference, of each layer's total, the ratio of the summed KLD, the
layers the proxy reran and its wall time beside the reference's (same run, same machine).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from shapes import write_results  # noqa: E402

MODELS = ["tiny-qwen2", "tiny-qwen3", "holdout-qwen2-6l", "holdout-qwen3-3l"]


def model_path(name: str) -> Path:
    from edgeqwen.checkpoint import embedded_dir
    from edgeqwen.train import trained

    local = embedded_dir() / name
    return local if local.exists() else trained(name)


def measure(path: Path, resolution: str, budget: float) -> dict:
    from edgeqwen.architectures import architecture_of
    from edgeqwen.planner.budget import grid_for
    from edgeqwen.planner.sensitivity import measure as run
    from edgeqwen.quantize.calibration import default_calibration_path

    import json

    arch = architecture_of(json.loads((path / "config.json").read_text()))
    formats = [(4, 64), (4, 32), (8, 128)]
    cfg = {"model": str(path), "calib_text": str(default_calibration_path()), "samples": 4, "seq_len": 128,
           "base_bits": 4, "base_block": 128, "symmetric": False, "grid": grid_for((4, 128), formats),
           "nodes_for": arch.module_nodes["builder"], "head_formats": [(8, 128)], "table_formats": [(8, 128)],
           "threads": 2, "resolution": resolution, "budget_tflop": budget}
    return run(cfg)


def main() -> int:
    from transformers import AutoConfig

    from edgeqwen.planner.budget import PROXY_SHARE, rerun_costs

    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    lines = ["Sensitivity proxy vs the per-matrix measurement, trained models, 4 × 128 calibration tokens, 2 threads",
             "| model | measurement | layers rerun | log-corr per matrix | log-corr per layer | Σ KLD vs reference | "
             "wall s | wall vs reference |", "|---|---|---|---|---|---|---|---|"]
    data = []
    for name in args.models.split(","):
        path = model_path(name)
        costs = rerun_costs(AutoConfig.from_pretrained(path), 4 * 128)
        n = len(costs)
        half = sorted({round(j * (n - 1) / max(n // 2 - 1, 1)) for j in range(max(n // 2, 2))})
        runs = [("per matrix (reference)", "matrix", 1e9), ("per layer", "layer", 1e9),
                ("proxy, every layer rerun", "proxy", sum(costs) * 1.01 / PROXY_SHARE),
                (f"proxy, {len(half)} of {n} layers rerun", "proxy", sum(costs[i] for i in half) * 1.01 / PROXY_SHARE),
                ("proxy, first and last rerun", "proxy", (costs[0] + costs[-1]) * 1.01 / PROXY_SHARE)]
        ref = None
        for label, resolution, budget in runs:
            rec = measure(path, resolution, budget)
            kld = np.array([g["kld"] for g in rec["groups"]])
            per_layer = kld.reshape(n, -1).sum(1)
            if ref is None:
                ref = (kld, per_layer, rec["wall_s"])
            rerun = rec.get("proxy", {}).get("measured_layers", list(range(n)))
            row = dict(model=name, measurement=label, layers_rerun=rerun,
                       corr_matrix=float(np.corrcoef(np.log(ref[0]), np.log(kld))[0, 1]),
                       corr_layer=float(np.corrcoef(np.log(ref[1]), np.log(per_layer))[0, 1]),
                       sum_ratio=float(kld.sum() / ref[0].sum()), wall_s=rec["wall_s"])
            data.append(row)
            lines.append(f"| {name} | {label} | {len(rerun)} of {n} | {row['corr_matrix']:.3f} | {row['corr_layer']:.3f} "
                         f"| {row['sum_ratio']:.2f} | {row['wall_s']:.1f} | {row['wall_s'] / ref[2]:.2f} |")
    write_results(args.out, "sensitivity-proxy", "\n".join(lines), data)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
