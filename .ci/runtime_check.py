"""CI, runtime profile: in a venv holding only the edgeqwen wheel (no torch) plus the openai client, verify, run
and serve an artifact that the full profile built. Usage: python .ci/runtime_check.py ARTIFACT"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

artifact = Path(sys.argv[1]).resolve()
heavy = [m for m in ("torch", "transformers", "onnxruntime_genai", "olive", "optimum") if importlib.util.find_spec(m)]
assert not heavy, f"the runtime profile pulled in {heavy}"
import edgeqwen  # noqa: E402

assert "site-packages" in edgeqwen.__file__, f"not the installed wheel: {edgeqwen.__file__}"
cli = [sys.executable, "-m", "edgeqwen"]
recipes = json.loads(subprocess.run(cli + ["recipes", "--json"], check=True, capture_output=True, text=True).stdout)
assert len(recipes) >= 50, len(recipes)  # shipped inside the wheel
assert json.loads(subprocess.run(cli + ["verify", str(artifact), "--json"], check=True, capture_output=True,
                                  text=True).stdout)["ok"]
out = subprocess.run(cli + ["run", str(artifact), "-p", "What does the assert statement do?", "--max-new-tokens", "16"],
                     check=True, capture_output=True, text=True)
assert out.stdout.strip(), out
build = subprocess.run(cli + ["build", "-o", "/nonexistent/x"], capture_output=True, text=True)
assert build.returncode == 2 and "pip install 'edgeqwen[build]'" in build.stderr, build.stderr

server = subprocess.Popen(cli + ["serve", str(artifact), "--port", "0"], stdout=subprocess.PIPE, text=True)
try:
    line = server.stdout.readline()
    url = line.strip().rsplit(" at ", 1)[-1]
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="unused")
    model = client.models.list().data[0].id
    t0 = time.perf_counter()
    chat = client.chat.completions.create(model=model, max_tokens=16,
                                          messages=[{"role": "user", "content": "What is a class?"}])
    assert chat.choices[0].message.content and chat.usage.completion_tokens > 0
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=model, max_tokens=16, stream=True, messages=[{"role": "user", "content": "What is a class?"}]) if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content  # greedy by default: the same text streamed
    print(f"runtime profile OK: {len(recipes)} recipes, verify, run, serve ({model}, "
          f"{time.perf_counter() - t0:.2f}s for two requests)")
finally:
    server.terminate()
    server.wait(timeout=30)
