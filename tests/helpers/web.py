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
