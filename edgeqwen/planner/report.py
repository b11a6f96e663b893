"""The sensitivity measurement and what `mixed_precision: auto` chose, as the manifest's `sensitivity` section and a
per-layer bar chart (sensitivity.png) in the artifact."""

from __future__ import annotations

from pathlib import Path

from ..schema import to_dict

KIND_COLORS = {"attn/qkv_proj": "#4c72b0", "attn/o_proj": "#55a868", "mlp/gate_proj": "#c44e52",
               "mlp/up_proj": "#8172b2", "mlp/down_proj": "#ccb974"}


def manifest_section(sensitivity: dict, plan) -> dict:
    choice = plan.mixed.choice
    upgraded = {name for names in plan.mixed.upgraded.values() for name in names}
    rows = [{"layer": g["layer"], "kind": g["kind"], "kld": round(g["kld"], 7),
             "format": choice.get(f"layers.{g['layer']}/{g['kind']}"),
             "upgraded": f"layers.{g['layer']}/{g['kind']}" in upgraded} for g in sensitivity["groups"]]
    return {
        "measured_at": f"int{sensitivity['base_bits']}/b{sensitivity['base_block']}",
        "calibration": {"source": sensitivity.get("source"), "samples": sensitivity["samples"],
                        "seq_len": sensitivity["seq_len"]},
        "threads": sensitivity["threads"], "wall_s": sensitivity["wall_s"], "cache_key": sensitivity.get("cache_key"),
        "noise_floor_kld": sensitivity["noise_floor_kld"], "tied": sensitivity["tied"],
        "head_kld": sensitivity["head"], "table_kld": sensitivity["table"],
        "plan": {k: v for k, v in to_dict(plan.mixed).items() if k != "choice"}, "groups": rows,
    }


def write_sensitivity(artifact: Path, sensitivity: dict, plan) -> dict:
    """Write sensitivity.png (when matplotlib is installed) and return the manifest section."""
    section = manifest_section(sensitivity, plan)
    try:
        plot(section, artifact / "sensitivity.png", plan.recipe)
        section["picture"] = "sensitivity.png"
    except ImportError:
        section["picture"] = None  # the `plots` extra is not installed
    return section


def plot(section: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows = section["groups"]
    layers = sorted({r["layer"] for r in rows})
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    width = 0.8 / max(len(kinds), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(layers) * len(kinds) / 2 + 3), 3.8))
    base = section["measured_at"]
    for j, kind in enumerate(kinds):
        xs, ys, edges = [], [], []
        for r in rows:
            if r["kind"] == kind:
                xs.append(r["layer"] + (j - (len(kinds) - 1) / 2) * width)
                ys.append(max(r["kld"], 1e-7))
                edges.append("black" if r["upgraded"] else "none")
        ax.bar(xs, ys, width=width, color=KIND_COLORS.get(kind, "#999999"), edgecolor=edges, linewidth=1.2,
               label=kind.split("/")[-1])
        for x, y, r in zip(xs, ys, (r for r in rows if r["kind"] == kind)):
            if r["upgraded"]:
                ax.annotate(r["format"].replace("/", "\n"), (x, y), ha="center", va="bottom", fontsize=6)
    ax.set_yscale("log")
    ax.set_xticks(np.array(layers))
    ax.set_xlabel("decoder layer")
    ax.set_ylabel(f"KLD with the matrix at {base}")
    p = section["plan"]
    ax.set_title(f"{title}\nplanned KLD {p.get('planned_kld', 0):.4f} (target {p.get('target_kld', 0):.4f}), "
                 f"{p.get('bits_per_weight', 0):.2f} bits/weight; outlined = upgraded (format above)", fontsize=9)
    ax.legend(fontsize=7, ncol=len(kinds), loc="upper center", bbox_to_anchor=(0.5, -0.18))
    fig.tight_layout()
    fig.savefig(path, dpi=90, metadata={"Software": None})
    plt.close(fig)
