"""web/ inside an artifact: the page and JavaScript API (assets/), the pinned libraries (vendor/, from npm.py's cache,
bare imports pointed at the bundled copies) and config.json, the model facts the page reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from ..errors import EdgeQwenError
from ..runtime.runner import EXECUTION_PROVIDERS
from .npm import PACKAGES, ensure_packages
from .wasm_graph import PASS_TOKENS, WASM_GRAPH

ASSETS = Path(__file__).resolve().parent / "assets"
WEB_DIR = "web"
# web/vendor/<name> <- node_modules/<path>. Two onnxruntime-web builds: the WebGPU one (asyncify) has no WebAssembly
# kernel for GatherBlockQuantized (measured: "Could not find an implementation"), the plain WebAssembly one has;
# transformers.js supplies the tokenizer and the chat template (its jinja)
VENDOR = {
    "ort.webgpu.min.mjs": "onnxruntime-web/dist/ort.webgpu.min.mjs",
    "ort.wasm.min.mjs": "onnxruntime-web/dist/ort.wasm.min.mjs",
    "ort-wasm-simd-threaded.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.mjs",
    "ort-wasm-simd-threaded.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.wasm",
    "ort-wasm-simd-threaded.asyncify.mjs": "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs",
    "ort-wasm-simd-threaded.asyncify.wasm": "onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.wasm",
    "transformers.web.min.js": "@huggingface/transformers/dist/transformers.web.min.js",
    "README.onnxruntime-web.md": "onnxruntime-web/README.md",  # MIT; the package ships no LICENSE file
    "LICENSE.transformers": "@huggingface/transformers/LICENSE",
}
# bare module specifiers inside a bundled file -> the bundled copy (each must occur: a new pin that moves them fails)
REWRITES = {
    "transformers.web.min.js": {'from"onnxruntime-common"': 'from"./ort.webgpu.min.mjs"',
                                'from"onnxruntime-web/webgpu"': 'from"./ort.webgpu.min.mjs"'},
}
# what the page needs of each backend: WebGPU adapter features (fp16 graphs need shader-f16) and tokens per pass
# (the provider table's limit: onnxruntime's WebGPU EP over SwiftShader computes multi-token steps wrongly)
BACKENDS = {"webgpu": EXECUTION_PROVIDERS["webgpu"], "wasm": EXECUTION_PROVIDERS["cpu"]}
MODULES = {"webgpu": "ort.webgpu.min.mjs", "wasm": "ort.wasm.min.mjs"}  # the onnxruntime-web build per backend


def _external_data(model: Path) -> list[str]:
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    return sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})


def _copy_vendor(modules: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name, rel in VENDOR.items():
        src = modules / rel
        if not src.exists():
            raise EdgeQwenError(f"{rel} is missing from the npm cache", where=str(modules),
                                hint="remove that cache folder and build again")
        if name not in REWRITES:
            shutil.copyfile(src, out / name)
            continue
        text = src.read_text(encoding="utf-8")
        for old, new in REWRITES[name].items():
            if old not in text:
                raise EdgeQwenError(f"{rel} no longer imports {old!r}: the bundler's rewrite does not fit this version",
                                    where=str(src), hint=f"pin the verified versions {PACKAGES}")
            text = text.replace(old, new)
        (out / name).write_text(text, encoding="utf-8")


def _graph_for(artifact: Path, backend: str, decoder: str) -> dict:
    """The graph a backend loads (WebAssembly: its own int8 graph where the artifact keeps one, wasm_graph.py) and the
    most tokens the page feeds it per pass (the execution provider's limit; the int8 graph's own)."""
    own = backend == "wasm" and (artifact / WASM_GRAPH).exists()
    model = WASM_GRAPH if own else decoder
    return {"model": model, "external_data": _external_data(artifact / model),
            "max_step_tokens": PASS_TOKENS if own else BACKENDS[backend].max_step_tokens,
            "decoder_max_step_tokens": BACKENDS[backend].max_step_tokens}


def refresh_web_config(artifact: Path) -> dict:
    """Point web/config.json's backends at the graphs the artifact holds now (after the WebAssembly graph is dropped)."""
    path = artifact / WEB_DIR / "config.json"
    config = json.loads(path.read_text())
    for backend, entry in config["backends"].items():
        entry.update(_graph_for(artifact, backend, config["model"]))
    path.write_text(json.dumps(config, indent=2) + "\n")
    return config


def web_config(artifact: Path, target, name: str, recipe_generation) -> dict:
    genai = json.loads((artifact / "genai_config.json").read_text())
    search = genai["search"]  # the recipe's generation settings, as the Python runner reads them
    generation = {"do_sample": bool(search.get("do_sample", False)), "temperature": float(search.get("temperature", 1.0)),
                  "top_p": float(search.get("top_p", 1.0)), "top_k": int(search.get("top_k", 0)),
                  "repetition_penalty": float(search.get("repetition_penalty", 1.0)),
                  "max_new_tokens": int(recipe_generation.max_new_tokens)}
    model, dec = genai["model"], genai["model"]["decoder"]
    eos = model["eos_token_id"]
    return {
        "name": name, "model": dec["filename"], "external_data": _external_data(artifact / dec["filename"]),
        "tokenizer": "tokenizer.json", "tokenizer_config": "tokenizer_config.json",
        "chat_template": "chat_template.jinja", "eos_token_id": [eos] if isinstance(eos, int) else eos,
        "context_length": int(genai["search"]["max_length"]), "num_layers": dec["num_hidden_layers"],
        "kv_heads": dec["num_key_value_heads"], "head_size": dec["head_size"], "vocab_size": model["vocab_size"],
        "generation": generation, "system_prompt": recipe_generation.system_prompt,
        "backends": {name: {"module": MODULES[name],
                            "requires_features": ["shader-f16"] if name == "webgpu" and target.shader_f16 else [],
                            **_graph_for(artifact, name, dec["filename"])}
                     for name in BACKENDS},
        "packages": PACKAGES, "max_file_mb": target.web_max_file_mb,
    }


def _check_sizes(artifact: Path, config: dict, budget_mb: int) -> None:
    fetched = [config["model"], *config["external_data"], config["tokenizer"]]
    fetched += [f for b in config["backends"].values() for f in (b["model"], *b["external_data"])]
    fetched += [f"{WEB_DIR}/vendor/{n}" for n in VENDOR]
    for rel in fetched:
        size = (artifact / rel).stat().st_size
        if size > budget_mb * 2**20:
            raise EdgeQwenError(f"{rel} is {size / 2**20:.0f} MB, over the web target's {budget_mb} MB per file (a "
                                "browser fetches each file into one ArrayBuffer)", where=str(artifact / rel),
                                hint="use a smaller model or int4 embeddings; sharding external data is not done yet")


def write_web(artifact: Path, target, name: str, recipe_generation) -> dict:
    """Write web/ into a finished artifact folder; returns the config the page reads (also recorded in the manifest).
    `recipe_generation`: the recipe's `generation:` block (system prompt, answer length)."""
    out = artifact / WEB_DIR
    shutil.copytree(ASSETS, out, dirs_exist_ok=True)
    _copy_vendor(ensure_packages(), out / "vendor")
    config = web_config(artifact, target, name, recipe_generation)
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    _check_sizes(artifact, config, target.web_max_file_mb)
    return config
