"""`edgeqwen sensitivity RECIPE`: measure what `mixed_precision: auto` plans from, and show what it would choose."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path


def cmd_sensitivity(args) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..errors import EdgeQwenError
    from ..extras import require
    from ..recipe import load_recipe
    from .report import manifest_section, plot
    from .rules import plan as make_plan
    from .sensitivity import sensitivity_for

    require("build", "measuring sensitivity")
    if args.output:  # before the measurement, which takes minutes on a real model
        out = Path(args.output)
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgeQwenError(f"cannot use {out} as the output folder: {exc.strerror}", where="-o",
                                hint="a folder (new or existing) for sensitivity.json and sensitivity.png") from None
    resolved = load_recipe(args.recipe)
    if not resolved.recipe.quantization.mixed_precision.auto:
        raise EdgeQwenError(f"recipe {resolved.recipe.name} does not use mixed_precision: auto",
                            where=f"{args.recipe}: quantization.mixed_precision",
                            hint="pick an auto recipe (the default int4 Qwen recipes), or add mixed_precision: auto")
    ckpt = resolve_checkpoint(args.model or resolved.recipe.model)
    base = make_plan(resolved, ckpt)
    with tempfile.TemporaryDirectory(prefix="edgeqwen-sensitivity-") as tmp:
        record = sensitivity_for(base, resolved, ckpt, Path(tmp), Path(args.calib) if args.calib else None)
    plan = make_plan(resolved, ckpt, sensitivity=record)
    section = manifest_section(record, plan)
    if args.output:
        (out / "sensitivity.json").write_text(json.dumps(section, indent=2) + "\n")
        plot(section, out / "sensitivity.png", resolved.recipe.name)
    if args.json:
        print(json.dumps(section, indent=2))
        return 0
    print(f"{resolved.recipe.name} on {ckpt.source}: KLD vs fp32 with one matrix at {section['measured_at']} "
          f"({record['samples']} × {record['seq_len']} calibration tokens, measured per {record['resolution']})")
    kinds = list(dict.fromkeys(r["kind"] for r in section["groups"]))
    print("  layer  " + "  ".join(f"{k.split('/')[-1]:>17}" for k in kinds))
    for layer in sorted({r["layer"] for r in section["groups"]}):
        cells = {r["kind"]: r for r in section["groups"] if r["layer"] == layer}
        print(f"  {layer:5d}  " + "  ".join(f"{cells[k]['kld']:8.5f} {cells[k]['format'] or '':>8}" for k in kinds))
    print(f"  lm_head: {', '.join(f'{k} {v:.5f}' for k, v in record['head'].items())}"
          + (" (tied: the shared table too)" if record["tied"] else ""))
    if record["table"]:
        print(f"  embedding table: {', '.join(f'{k} {v:.5f}' for k, v in record['table'].items())}")
    for d in plan.decisions:
        if d.code.startswith("mixed."):
            print(f"  plan: {d}")
    return 0


def add_sensitivity_parser(sub) -> None:
    p = sub.add_parser("sensitivity", help="measure each decoder-layer matrix's KLD cost at 4 bits and show the "
                                           "mixed-precision choice of an auto recipe")
    p.add_argument("recipe")
    p.add_argument("--model", help="local checkpoint folder or hub id (default: the recipe's model)")
    p.add_argument("--calib", metavar="FILE", help="UTF-8 calibration text (default: the packaged text)")
    p.add_argument("-o", "--output", help="folder for sensitivity.json and sensitivity.png")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(fn=cmd_sensitivity)
