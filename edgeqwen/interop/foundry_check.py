"""Load an edgeqwen artifact in Foundry Local's own runtime and chat with it.

Runs under the Python of a separate virtual environment holding `foundry-local-sdk` (it pins its
own onnxruntime and onnxruntime-genai), so this file imports nothing from edgeqwen:

    /path/to/foundry-venv/bin/python -m edgeqwen.interop.foundry_check ARTIFACT [--max-tokens N]

Prints one JSON line: {"ok", "model_id", "text", "completion_tokens", "tokens_per_s"}.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("artifact")
    ap.add_argument("--prompt", default="What does the assert statement do?")
    ap.add_argument("--max-tokens", type=int, default=32)
    args = ap.parse_args(argv)
    from foundry_local_sdk import CatalogType, Configuration, FoundryLocalManager, ModelInfoBuilder

    home = tempfile.mkdtemp(prefix="foundry-")
    FoundryLocalManager.initialize(Configuration(app_name="edgeqwen-check", app_data_dir=home, model_cache_dir=f"{home}/cache",
                                                 logs_dir=f"{home}/logs", disable_nonessential_telemetry=True))
    manager = FoundryLocalManager.instance
    catalog = manager.get_catalog(CatalogType.LOCAL)
    model_id = "edgeqwen-artifact:1"
    model = catalog.register_model(args.artifact, model_id, ModelInfoBuilder().set_string_property("task", "chat-completion"))
    model.load()
    client = model.get_chat_client()
    client.settings.max_tokens = args.max_tokens
    client.settings.temperature = 0.0
    t0 = time.perf_counter()
    resp = client.complete_chat([{"role": "user", "content": args.prompt}])
    wall = time.perf_counter() - t0
    text = resp.choices[0].message.content
    usage = getattr(resp, "usage", None)
    n = getattr(usage, "completion_tokens", None) if usage else None
    model.unload()
    print(json.dumps({"ok": True, "model_id": model_id, "text": text, "completion_tokens": n,
                      "tokens_per_s": (n / wall) if n else None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
