"""`mixed_precision: auto`: bits and block size per decoder-layer MatMul, chosen from measured sensitivity.

Input: a sensitivity record (`planner/sensitivity.py`): for every group — one decoder layer's qkv, o, gate, up or
down projection — the KLD against the fp32 model when that group alone is taken to the base format, and each
format's activation-weighted weight error Σ_j E[x_j²]·Σ_i (W_ij − Q(W)_ij)². A format's KLD is predicted from the
measured one by the ratio of those errors (KLD is locally quadratic in the weight perturbation), and groups add up.

Choice: start with every group at the base format (the fewest bytes), then repeatedly take the single upgrade with
the largest predicted KLD saved per byte added, until the planned KLD meets the target (`fewest_bytes`) or no
upgrade fits under `max_bits_per_weight` (`best_accuracy` spends the whole budget). A soft cap (`strict_cap: false`)
gives way only where the plan within it is predicted to miss the accuracy gate (`gate_kld`): then upgrades go on past
the cap until the target is met. Nothing here names a layer:
the same rule plans a 3-layer and a 36-layer model. Pure and deterministic (ties go to the earlier group).

Zero points (`zero_points: auto`, a symmetric base): every format also comes with a zero point per block ("+zp"),
its KLD predicted from its own measured weight error like any format's. Zero points cost few bytes but kernel time
(onnxruntime's MatMulNBits takes a slower path with them), so an upgrade is priced in time-equivalent bytes: a
matrix with zero points counts its bytes × (1 + the target's measured `zero_point_cost`). The cap stays in real
bytes. A matrix keeps zero points only where the accuracy they buy is worth that time like any other upgrade.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .sizes import fit_block, matrix_bytes


def fmt(bits: int, block: int, zp: bool = False) -> str:
    """A format's name: "int4/b128"; "int4/b128+zp" for the same with zero points over a symmetric base."""
    return f"int{bits}/b{block}{'+zp' if zp else ''}"


@dataclass(frozen=True)
class MixedChoice:
    node_settings: dict[str, dict]  # exporter node → {bits, group_size} where not the base
    summary: dict  # for the plan, the manifest and the picture
    decisions: tuple[tuple[str, str], ...] = field(default_factory=tuple)


def _predicted(group: dict, key: str, base: str, scale: float) -> float:
    err, base_err = group["err"].get(key), group["err"].get(base)
    if err is None:
        raise KeyError(f"sensitivity record has no error for format {key} (has {', '.join(group['err'])})")
    return scale * group["kld"] * err / base_err if base_err and base_err > 0 else 0.0


def choose(sens: dict, *, nodes_for: dict[str, str], base_bits: int, base_block: int, symmetric: bool,
           formats: list[tuple[int, int]], whole_groups: bool, scale_bytes: int, target_kld: float,
           max_bits_per_weight: float | None, objective: str, strict_cap: bool = True,
           gate_kld: float | None = None, zero_point_cost: float | None = None) -> MixedChoice:
    """`nodes_for` maps an HF module path inside a layer (e.g. "mlp.down_proj") to the exporter's node in the layer.
    `gate_kld`: the decoder layers' share of the accuracy gate's KLD; a soft cap holds while the plan within it is
    predicted at or under it (None: the target, so the cap gives way wherever the target is not met).
    `zero_point_cost` (a symmetric base whose record measured the "+zp" formats too): every format also with zero
    points, priced as that share more bytes."""
    base = fmt(base_bits, sens["base_block"])
    scale = float(sens.get("kld_scale", 1.0))  # > 1 after a measured miss: the predictions were too optimistic
    with_zp = (False, True) if zero_point_cost is not None and symmetric else (False,)
    groups = []
    for g in sens["groups"]:
        k = g["shapes"][0][0]  # the group's matrices share their input (K)
        options = {}  # (bits, block, zero points) -> (bytes, time-equivalent bytes, predicted KLD)
        for bits, block in [(base_bits, base_block)] + list(formats):
            b = fit_block(k, block, whole_groups)
            if b is None:
                continue
            for zp in with_zp:
                size = sum(matrix_bytes(kk, n, bits, b, zp or not symmetric, scale_bytes, None, 4)
                           for kk, n in g["shapes"])
                options[(bits, b, zp)] = (size, size * (1 + zero_point_cost) if zp else size,
                                          _predicted(g, fmt(bits, b, zp), base, scale))
        start = fit_block(k, base_block, whole_groups)
        if start is None or (base_bits, start, False) not in options:
            continue  # no whole block fits K: the planner leaves this group to the fallback rules
        nodes = sorted({f"/model/layers.{g['layer']}/{nodes_for[m]}/MatMul" for m in g["modules"]})
        groups.append({"group": g, "nodes": nodes, "options": options, "at": (base_bits, start, False)})
    params = sum(n * k for g in groups for k, n in g["group"]["shapes"])
    if not groups or not params:
        return MixedChoice({}, {"groups": 0})
    size = sum(g["options"][g["at"]][0] for g in groups)
    kld = sum(g["options"][g["at"]][2] for g in groups)
    base_bpw = size * 8 / params
    cap = max_bits_per_weight * params / 8 if max_bits_per_weight else float("inf")
    size, kld = _greedy(groups, size, kld, cap, target_kld, objective)
    exceeded, capped_kld = False, kld
    must = target_kld if gate_kld is None else max(gate_kld, target_kld)
    if kld > must and not strict_cap and cap != float("inf"):  # a soft cap gives way where keeping it misses the gate
        size, kld = _greedy(groups, size, kld, float("inf"), target_kld, "fewest_bytes")
        exceeded = True
    return _summarize(groups, size, kld, params, base_bits, base_block, base_bpw, formats, objective, target_kld,
                      max_bits_per_weight, scale, whole_groups, exceeded, capped_kld, gate_kld, strict_cap,
                      zero_point_cost if len(with_zp) > 1 else None)


def _greedy(groups: list, size: float, kld: float, cap: float, target_kld: float, objective: str):
    """Take upgrades by predicted KLD saved per time-equivalent byte added until the target is met (or, for
    best_accuracy, the cap: real bytes)."""
    while objective == "best_accuracy" or kld > target_kld:
        best = None
        for i, g in enumerate(groups):
            size0, cost0, kld0 = g["options"][g["at"]]
            for opt, (size1, cost1, kld1) in g["options"].items():
                added, paid, saved = size1 - size0, cost1 - cost0, kld0 - kld1
                if paid <= 0 or saved <= 0 or size + added > cap:
                    continue
                gain = saved / paid
                if best is None or gain > best[0]:
                    best = (gain, i, opt, added, saved)
        if best is None:
            break
        _, i, opt, added, saved = best
        groups[i]["at"] = opt
        size += added
        kld -= saved
    return size, kld


def _summarize(groups, size, kld, params, base_bits, base_block, base_bpw, formats, objective, target_kld,
               max_bits_per_weight, scale, whole_groups, exceeded, capped_kld, gate_kld, strict_cap,
               zero_point_cost) -> MixedChoice:
    settings: dict[str, dict] = {}
    upgraded: dict[str, list[str]] = {}
    for g in groups:
        bits, block, zp = g["at"]
        if (bits, block, zp) != (base_bits, base_block, False):
            for node in g["nodes"]:
                settings[node] = {"bits": bits, "group_size": block, **({"scheme": "asym"} if zp else {})}
        if g["at"] != (base_bits, fit_block(g["group"]["shapes"][0][0], base_block, whole_groups), False):
            upgraded.setdefault(fmt(bits, block, zp), []).append(f"layers.{g['group']['layer']}/{g['group']['kind']}")
    bpw = size * 8 / params
    met = kld <= target_kld
    summary = {
        "base": fmt(base_bits, base_block), "formats": [fmt(b, s) for b, s in formats], "objective": objective,
        "target_kld": target_kld, "planned_kld": round(kld, 6), "met": met, "groups": len(groups),
        "bits_per_weight": round(bpw, 3), "base_bits_per_weight": round(base_bpw, 3),
        "max_bits_per_weight": max_bits_per_weight, "cap_exceeded": exceeded, "capped_kld": round(capped_kld, 6),
        "kld_scale": scale, "upgraded": upgraded, "zero_point_cost": zero_point_cost,
        "choice": {f"layers.{g['group']['layer']}/{g['group']['kind']}": fmt(*g["at"]) for g in groups},
    }
    n_up = sum(len(v) for v in upgraded.values())
    what = "; ".join(f"{k} ×{len(v)}: {', '.join(v[:4])}{' …' if len(v) > 4 else ''}" for k, v in upgraded.items())
    decisions = [("mixed.auto", f"mixed precision auto: {n_up} of {len(groups)} decoder-layer matrices upgraded from "
                  f"{fmt(base_bits, base_block)}{' (' + what + ')' if what else ''}; planned KLD {kld:.4f} "
                  f"{'<=' if met else '>'} target {target_kld:.4f}, {bpw:.2f} bits per weight (base {base_bpw:.2f}"
                  f"{f', cap {max_bits_per_weight}' if max_bits_per_weight else ''})")]
    if zero_point_cost is not None:
        kept = sum(1 for g in groups if g["at"][2])
        decisions.append(("mixed.zero_points", f"mixed precision auto: symmetric base; {kept} of {len(groups)} "
                          f"decoder-layer matrices keep zero points (their predicted KLD saved worth the kernel's "
                          f"{zero_point_cost:.0%} extra time, priced as bytes)"))
    if exceeded:
        why = (f"the decoder layers within it are predicted at KLD {capped_kld:.4f}, over their share of the gate, "
               f"{gate_kld:.4f}"
               if gate_kld is not None else f"the target KLD {target_kld:.4f} needs more")
        decisions.append(("mixed.cap_exceeded", f"mixed precision auto: past the {max_bits_per_weight} bits-per-weight "
                          f"cap on this model ({why}): {bpw:.2f} (set strict_cap: true to keep the cap and let the "
                          "accuracy gate decide)"))
    elif not met and not strict_cap and gate_kld is not None and max_bits_per_weight:
        decisions.append(("mixed.cap_kept", f"mixed precision auto: the {max_bits_per_weight} bits-per-weight cap kept: "
                          f"the decoder layers within it are predicted at KLD {kld:.4f}, within their share of the gate, "
                          f"{gate_kld:.4f}, though over the target {target_kld:.4f} (a measured miss plans again past "
                          "the cap)"))
    elif not met:
        decisions.append(("mixed.cap", f"mixed precision auto: the target KLD {target_kld:.4f} is not reachable within "
                          f"{max_bits_per_weight} bits per weight (planned {kld:.4f}); the accuracy gate decides"))
    return MixedChoice(settings, summary, tuple(decisions))
