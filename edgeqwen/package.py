"""Artifact packaging: genai_config fix-ups, Foundry Local metadata, runner, manifest, verify."""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from importlib import metadata
from pathlib import Path

from .architectures import get_architecture
from .checkpoint import Checkpoint
from .errors import EdgeQwenError
from .recipe import Resolved
from .runtime.runner import entry_ok, sha256_file  # one hashing routine for build, verify and the shipped runner
from .schema import to_dict

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
RUNNER_SOURCE = Path(__file__).resolve().parent / "runtime" / "runner.py"
VERSIONED_PACKAGES = ("edgeqwen", "onnx", "onnxruntime", "onnxruntime-genai", "transformers", "torch", "tokenizers", "numpy")


def package_versions() -> dict[str, str]:
    """Versions of the stack, plus every package a registered algorithm's result depends on."""
    from .quantize.registry import algorithms

    out = {}
    for name in VERSIONED_PACKAGES + tuple(s.cache_package for s in algorithms() if s.cache_package):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _token_ids(artifact: Path, ckpt: Checkpoint) -> dict:
    """eos/pad/bos ids from the checkpoint's generation config, config and tokenizer (never null)."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(artifact / "tokenizer.json"))
    gen = {}
    if (ckpt.path / "generation_config.json").exists():
        gen = json.loads((ckpt.path / "generation_config.json").read_text())
    tcfg = json.loads((artifact / "tokenizer_config.json").read_text()) if (artifact / "tokenizer_config.json").exists() else {}

    def tok_id(name):
        value = tcfg.get(name)
        if isinstance(value, dict):
            value = value.get("content")
        return tok.token_to_id(value) if value else None

    eos = gen.get("eos_token_id", ckpt.config.get("eos_token_id"))
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    for extra in (tok_id("eos_token"), tok.token_to_id("<|im_end|>"), tok.token_to_id("<|endoftext|>")):
        if extra is not None and extra not in eos:
            eos.append(extra)
    if not eos:
        raise EdgeQwenError("cannot find an end-of-sequence token id in the checkpoint or its tokenizer",
                            where=str(ckpt.path), hint="set eos_token_id in generation_config.json")
    pad = gen.get("pad_token_id", ckpt.config.get("pad_token_id"))
    if pad is None:
        pad = tok_id("pad_token") if tok_id("pad_token") is not None else eos[0]
    bos = gen.get("bos_token_id", ckpt.config.get("bos_token_id"))
    return {"eos_token_id": eos, "pad_token_id": pad, "bos_token_id": bos if bos is not None else pad}


def finalize_genai_config(artifact: Path, resolved: Resolved, ckpt: Checkpoint) -> dict:
    path = artifact / "genai_config.json"
    cfg = json.loads(path.read_text())
    genai_type = get_architecture(ckpt.architecture).genai_type
    if cfg["model"].get("type") != genai_type:  # onnxruntime-genai dispatches its C++ model on this name
        raise EdgeQwenError(f"the exporter wrote model type {cfg['model'].get('type')!r} for {ckpt.architecture}; "
                            f"onnxruntime-genai loads it as {genai_type!r}", where=str(path),
                            hint="the architecture registry (edgeqwen/architectures.py) and the exporter disagree")
    recipe = resolved.recipe
    ctx = min(recipe.context_length, int(cfg["model"].get("context_length") or recipe.context_length))
    cfg["model"]["context_length"] = ctx
    cfg["model"].update(_token_ids(artifact, ckpt))
    g = recipe.generation
    cfg["search"].update(
        max_length=ctx,  # never the 32k default: onnxruntime-genai pre-allocates KV for max_length
        # builder graphs (GroupQueryAttention) write KV in place; portable graphs return a longer present
        past_present_share_buffer=recipe.exporter.value == "builder" and resolved.target.kv_in_place,
        do_sample=False,
        temperature=g.temperature,
        top_p=g.top_p,
        top_k=g.top_k,
        repetition_penalty=g.repetition_penalty,
    )
    threads = resolved.target.intra_op_threads
    if threads:
        cfg["model"]["decoder"]["session_options"]["intra_op_num_threads"] = threads
    if (artifact / "vision.onnx").exists():  # Qwen2.5-VL: the image side (runner.VisionPath reads these)
        cfg["model"]["vision"] = {"filename": "vision.onnx", "config_filename": "vision_config.json",
                                  "spatial_merge_size": ckpt.config["vision_config"]["spatial_merge_size"],
                                  "patch_size": ckpt.config["vision_config"]["patch_size"]}
        cfg["model"]["embedding"] = {"filename": "embedding.onnx", "inputs": {"input_ids": "input_ids",
                                     "image_features": "image_features"}, "outputs": {"inputs_embeds": "inputs_embeds"}}
        cfg["model"]["image_token_id"] = ckpt.config["image_token_id"]
        cfg["model"]["vision_start_token_id"] = ckpt.config["vision_start_token_id"]
    path.write_text(json.dumps(cfg, indent=4) + "\n")
    return cfg


def write_chat_template(artifact: Path, ckpt: Checkpoint) -> str:
    template_path = artifact / "chat_template.jinja"
    if not template_path.exists():
        tcfg = json.loads((artifact / "tokenizer_config.json").read_text())
        tmpl = tcfg.get("chat_template")
        if not tmpl:
            raise EdgeQwenError("the checkpoint has no chat template", where=str(ckpt.path / "tokenizer_config.json"),
                                hint="add chat_template (Qwen's ChatML template) to tokenizer_config.json")
        template_path.write_text(tmpl)
    return template_path.read_text()


def write_inference_model(artifact: Path, name: str, template: str, architecture: str) -> None:
    """Foundry Local's inference_model.json: {"Name", "PromptTemplate"} with a {Content} slot."""
    from .runtime.runner import render_chat_template

    fmt = get_architecture(architecture).prompt_format
    prompt = render_chat_template(template, [{"role": "user", "content": "{Content}"}], add_generation_prompt=True)
    data = {
        "Name": name,
        "PromptTemplate": {"system": fmt.system, "user": fmt.user, "assistant": fmt.assistant, "prompt": prompt},
    }
    (artifact / "inference_model.json").write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def convert_to_ort(artifact: Path, platform: str) -> dict:
    """model.onnx(+data) → model.ort (optimized ahead of time) + required_operators.config; genai_config points at it."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(artifact / "model.onnx"),
         "--optimization_style", "Fixed", "--target_platform", platform],
        capture_output=True, text=True,
    )
    if proc.returncode != 0 or not (artifact / "model.ort").exists():
        raise EdgeQwenError(f"ORT-format conversion failed: {proc.stderr.strip()[-800:]}", where=str(artifact / "model.onnx"),
                            hint="the graph uses an operator the ORT format converter cannot handle")
    config = artifact / "model.required_operators.config"
    # the converter names the (temporary) source path in a comment: keep the file reproducible
    lines = ["# - model.ort" if line.startswith("# - ") else line for line in config.read_text().splitlines()]
    (artifact / "required_operators.config").write_text("\n".join(lines) + "\n")
    config.unlink()
    onnx_bytes = sum((artifact / f).stat().st_size for f in ("model.onnx", "model.onnx.data") if (artifact / f).exists())
    for f in ("model.onnx", "model.onnx.data"):
        (artifact / f).unlink(missing_ok=True)
    cfg_path = artifact / "genai_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["model"]["decoder"]["filename"] = "model.ort"
    cfg_path.write_text(json.dumps(cfg, indent=4) + "\n")
    ops = [line for line in (artifact / "required_operators.config").read_text().splitlines() if line and not line.startswith("#")]
    return {"format": "ort", "target_platform": platform, "onnx_bytes": onnx_bytes,
            "ort_bytes": (artifact / "model.ort").stat().st_size, "required_operators": ops}


def runtime_block(artifact: Path, target) -> dict:
    """What the artifact needs to run: the execution provider(s) it was built for, its declared fallback, and the
    oldest onnxruntime its graphs load in (read by the runner before it opens a session)."""
    import onnxruntime

    from .ortfloor import artifact_floor

    floor = artifact_floor(artifact, onnxruntime.__version__, ort_format=target.artifact_format.value == "ort")
    return {"providers": [target.execution_provider.value], "fallback": "cpu",
            "min_onnxruntime": floor.version, "min_onnxruntime_why": floor.reasons}


def copy_runner(artifact: Path) -> None:
    shutil.copyfile(RUNNER_SOURCE, artifact / "runner.py")
    if (artifact / "vision.onnx").exists():  # the image path's numpy code, imported by runner.py
        shutil.copyfile(RUNNER_SOURCE.parent / "vision.py", artifact / "vision.py")


def file_entry(p: Path) -> dict:
    """A manifest's record of one file (what `verify` and the runner check)."""
    return {"sha256": sha256_file(p), "size": p.stat().st_size}


def add_to_manifest(artifact: Path, names: list[str]) -> None:
    """Files added to a finished artifact (e.g. tune's report) join its manifest, so `verify` stays clean."""
    manifest = read_manifest(artifact)
    for name in names:
        manifest["files"][name] = file_entry(artifact / name)
    manifest["size_bytes"] = sum(f["size"] for f in manifest["files"].values())
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def write_manifest(artifact: Path, *, resolved: Resolved, ckpt: Checkpoint, export: dict, extra: dict | None = None) -> dict:
    files = {}
    for p in sorted(artifact.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            files[p.relative_to(artifact).as_posix()] = file_entry(p)
    manifest = {
        "format_version": FORMAT_VERSION,
        "name": resolved.recipe.name,
        "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "source": {
            "model": ckpt.source,
            "path": str(ckpt.path),
            "architecture": ckpt.architecture,
            "config_sha256": ckpt.config_sha256,
        },
        **resolved.as_dict(),
        "export": export,
        "versions": package_versions(),
        "files": files,
        "size_bytes": sum(f["size"] for f in files.values()),
    }
    if extra:
        manifest.update(extra)
    (artifact / MANIFEST).write_text(json.dumps(manifest, indent=2, default=to_dict) + "\n")
    return manifest


def read_manifest(artifact: Path) -> dict:
    path = Path(artifact) / MANIFEST
    if not path.exists():
        raise EdgeQwenError(f"no {MANIFEST} in {artifact}", where=str(artifact), hint="pass a folder made by `edgeqwen build`")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise EdgeQwenError(f"{MANIFEST} is not valid JSON: {exc.msg}", where=f"{path}, line {exc.lineno}") from None
    except UnicodeDecodeError:
        raise EdgeQwenError(f"{MANIFEST} is not UTF-8 text", where=str(path)) from None
    if not isinstance(data, dict):
        raise EdgeQwenError(f"{MANIFEST} is not a JSON object", where=str(path), hint="rebuild the artifact")
    return data


def verify_artifact(artifact: Path) -> dict[str, list[str]]:
    """Re-hash every file. Returns {'missing', 'modified', 'extra', 'malformed', 'unsafe'}: lists of paths; manifest
    entries without a size and a sha256 (64 hex digits) are 'malformed', and paths leading outside the artifact
    'unsafe' (never read)."""
    artifact = Path(artifact)
    manifest = read_manifest(artifact)
    problems: dict[str, list[str]] = {"missing": [], "modified": [], "extra": [], "malformed": [], "unsafe": []}
    listed = manifest.get("files")
    if not isinstance(listed, dict):
        raise EdgeQwenError(f"{MANIFEST} has no 'files' mapping", where=str(artifact / MANIFEST),
                            hint="rebuild the artifact with `edgeqwen build`")
    for rel, info in listed.items():
        if Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems["unsafe"].append(rel)
            continue
        if not entry_ok(info):
            problems["malformed"].append(rel)
            continue
        p = artifact / rel
        if not p.is_file():
            problems["missing"].append(rel)
        elif p.stat().st_size != info["size"] or sha256_file(p) != info["sha256"]:
            problems["modified"].append(rel)
    for p in sorted(artifact.rglob("*")):
        rel = p.relative_to(artifact).as_posix()
        if p.is_file() and rel != MANIFEST and rel not in listed and "__pycache__" not in rel:
            problems["extra"].append(rel)
    return problems
