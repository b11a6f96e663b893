"""`edgeqwen eval ARTIFACT --reference MODEL`."""

from __future__ import annotations

import json
from pathlib import Path


def cmd_eval(args) -> int:
    from ..checkpoint import resolve_checkpoint
    from ..errors import EdgeQwenError
    from ..package import read_manifest
    from .core import EvalConfig, evaluate, format_table, write_report
    from .stage import check_gate
    from ..recipe import Accuracy

    artifact = Path(args.artifact)
    if not artifact.is_dir():
        raise EdgeQwenError(f"artifact folder {'is a file, not a folder' if artifact.exists() else 'does not exist'}: "
                            f"{artifact}", where=str(artifact.absolute()),
                            hint="pass a folder made by `edgeqwen build` or any onnxruntime-genai model folder")
    if (artifact / "manifest.json").exists():
        manifest = read_manifest(artifact)
    elif (artifact / "genai_config.json").exists():
        # any onnxruntime-genai folder (e.g. the model builder's own output): no recipe, so no gate
        if not args.reference:
            raise EdgeQwenError(f"{artifact} has no manifest.json naming its source model",
                                where=str(artifact), hint="pass --reference CHECKPOINT_FOLDER")
        manifest = {"recipe": {}, "name": artifact.name}
    else:
        raise EdgeQwenError(f"{artifact} has neither manifest.json (an edgeqwen artifact) nor genai_config.json (an "
                            "onnxruntime-genai model folder)", where=str(artifact.absolute()),
                            hint="pass a folder made by `edgeqwen build` or any onnxruntime-genai model folder")
    out = Path(args.output) if args.output else Path(".")
    if (out.resolve() == artifact.resolve() and (artifact / "manifest.json").exists()):
        raise EdgeQwenError("eval would write accuracy.json/accuracy.png into the artifact and overwrite its own "
                            "report (then `verify` and `run` reject it)", where=str(artifact),
                            hint="run it from another folder, or pass -o REPORT_FOLDER")
    try:
        ref = resolve_checkpoint(args.reference or manifest["source"]["model"])
    except EdgeQwenError as exc:
        if exc.where != "--model":  # checkpoint.py names build's flag; name where eval's model came from
            raise
        if args.reference:
            raise EdgeQwenError(f"reference {exc.what}", where="--reference", hint=exc.hint) from None
        raise EdgeQwenError(exc.what, where=f"{artifact / 'manifest.json'}: source.model",
                            hint="pass --reference CHECKPOINT_FOLDER (the model the artifact was built from)") from None
    summary = evaluate(artifact, ref.path, EvalConfig(window=args.window, max_windows=args.max_windows,
                                                      eval_text=Path(args.eval_text) if args.eval_text else None))
    gate = Accuracy(**manifest["recipe"].get("accuracy", {}))
    missed = check_gate(summary, gate)
    summary["gate"] = gate.thresholds()
    summary["status"] = "no gate" if not summary["gate"] else "pass" if not missed else "fail"
    summary["missed"] = missed
    jpath, ppath = write_report(summary, out, manifest.get("name", artifact.name))
    if args.json:
        print(json.dumps(summary, indent=2, default=str))
        return 0 if not missed else 1
    print(f"accuracy of {artifact} vs {ref.source}:")
    print(format_table(summary))
    print(f"gate: {summary['status']}" + ("".join(f"\n  missed {m}" for m in missed)))
    print(f"wrote {jpath} and {ppath}")
    return 0 if not missed else 1


def add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="accuracy of an artifact (or any onnxruntime-genai folder) vs the PyTorch fp32 reference")
    p.add_argument("artifact")
    p.add_argument("--reference", help="reference checkpoint (default: the artifact's source model)")
    p.add_argument("--eval-text", help="UTF-8 text file (default: the packaged eval text)")
    p.add_argument("--window", type=int, default=512)
    p.add_argument("--max-windows", type=int, default=8)
    p.add_argument("-o", "--output", help="folder for accuracy.json / accuracy.png (default: .)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(fn=cmd_eval)
