"""Headless Chromium for the browser tests: Debian's chromium driven by Playwright, with SwiftShader as the WebGPU
adapter (Vulkan ICD from chromium-common) and the network closed (no background fetches)."""

from __future__ import annotations

import contextlib
import os
import shutil
import threading
from pathlib import Path

CHROMIUM = os.environ.get("EDGEQWEN_CHROMIUM", "/usr/bin/chromium")
SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
ARGS = ["--no-sandbox", "--headless=new", "--enable-unsafe-webgpu", "--enable-features=Vulkan",
        "--use-angle=swiftshader", "--use-webgpu-adapter=swiftshader",
        "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
        "--disable-dev-shm-usage"]


def browser_missing() -> str | None:
    """Why the browser tests cannot run here (None: they can)."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install playwright; .ci/device_browser.sh does it)"
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/device_browser.sh does it)"
    if not Path(SWIFTSHADER_ICD).exists():
        return f"no SwiftShader Vulkan ICD at {SWIFTSHADER_ICD} (Debian's chromium-common ships it)"
    if shutil.which("npm") is None and not Path.home().joinpath(".cache", "edgeqwen", "npm").exists():
        return "npm is not installed and the web libraries are not cached"
    return None


@contextlib.contextmanager
def serving(artifact: Path):
    """`edgeqwen web`'s server on a free loopback port, in a thread; yields the page URL."""
    from edgeqwen.web.server import make_web_server, page_url

    server = make_web_server(artifact, port=0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield page_url(server)
    finally:
        server.shutdown()
        server.server_close()


@contextlib.contextmanager
def chromium():
    """A headless Chromium (Playwright's Browser) with SwiftShader's Vulkan adapter for WebGPU."""
    from playwright.sync_api import sync_playwright

    runtime = Path(os.environ.get("XDG_RUNTIME_DIR") or "/tmp/edgeqwen-xdg")
    runtime.mkdir(mode=0o700, parents=True, exist_ok=True)
    env = {**os.environ, "VK_ICD_FILENAMES": SWIFTSHADER_ICD, "XDG_RUNTIME_DIR": str(runtime)}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, env=env, headless=True)
        try:
            yield browser
        finally:
            browser.close()


GREEDY_JS = """async ([ids, n, keep]) => {
  const m = window.edgeqwenModel, tokens = [], logits = [];
  const t0 = performance.now();
  for await (const r of m.stream(ids, {maxNewTokens: n, ignoreEos: true, logits: keep,
                                       sampling: {do_sample: false, repetition_penalty: 1}})) {
    tokens.push(r.token); if (keep) logits.push(Array.from(r.logits));
  }
  return {tokens, logits, stats: m.stats, seconds: (performance.now() - t0) / 1000};
}"""


def open_page(browser, url: str, backend: str, timeout_s: float = 180, **query):
    """The artifact's page on `backend` ('auto', 'wasm', 'webgpu'), once its model is loaded; console lines collected
    in page.console_lines."""
    page = browser.new_page()
    page.console_lines = []
    page.on("console", lambda m: page.console_lines.append(m.text))
    page.on("pageerror", lambda e: page.console_lines.append(f"pageerror: {e}"))
    params = "&".join(f"{k}={v}" for k, v in {"backend": backend, **query}.items())
    page.goto(f"{url}?{params}")
    page.wait_for_function("['ready', 'error', 'file'].includes(document.body.dataset.state)", timeout=timeout_s * 1000)
    state = page.evaluate("document.body.dataset.state")
    assert state == "ready", f"page state {state}: {page.inner_text('#status')}; console: {page.console_lines[-5:]}"
    return page


def page_greedy(page, ids: list[int], n: int, logits: bool = True) -> dict:
    """n greedy tokens after `ids` through the page's model (EOS ignored), with the logits row of each (`logits`)."""
    return page.evaluate(GREEDY_JS, [ids, n, logits])


def chat_turn(page, text: str, timeout_s: float = 240) -> tuple[str, str]:
    """Type `text`, send it, wait for the answer: (assistant text in the DOM, the tokens/s line)."""
    page.fill("#prompt", text)
    page.click("#send")
    page.wait_for_function("document.body.dataset.state === 'ready' && document.querySelector('#tps').textContent",
                           timeout=timeout_s * 1000)
    return page.inner_text(".msg.assistant"), page.inner_text("#tps")


def log_dir() -> Path:
    """Where screenshots go beside the test log (EDGEQWEN_TEST_LOG_DIR, else /tmp/edgeqwen-test-log)."""
    path = Path(os.environ.get("EDGEQWEN_TEST_LOG_DIR") or "/tmp/edgeqwen-test-log")
    path.mkdir(parents=True, exist_ok=True)
    return path
