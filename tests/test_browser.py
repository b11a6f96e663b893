"""The web artifact in a real browser: Debian's Chromium, headless, driven by Playwright; the page on WebAssembly and on
WebGPU (SwiftShader, a software adapter without shader-f16) against the Python runner on the same graph. A software
adapter proves the graph and onnxruntime-web's WebGPU kernels compute the right thing; it says nothing about speed.
Run by .ci/device_browser.sh. Screenshots go to EDGEQWEN_TEST_LOG_DIR (default /tmp/edgeqwen-test-log)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from edgeqwen.package import verify_artifact
from edgeqwen.runtime.agreement import compare_runs

from .helpers.web import browser_missing, chat_turn, chromium, log_dir, open_page, page_greedy, serving

pytestmark = [pytest.mark.device, pytest.mark.browser]
# WebGPU runs the decoder graph, fp32 activations on both sides (accuracy level 0 on the CPU): measured max |logit diff|
# ~1e-5 on tiny-qwen2. WebAssembly runs the int8 graph, whose DynamicQuantizeMatMul quantizes each pass's activations:
# the same ~1e-6 fp32 difference (attention's summation order) can move one activation across a rounding boundary,
# one int8 step, which the next layers carry to the logits (tiny-qwen3, a 24-token prompt in passes of 16 + 8, Node's
# onnxruntime-web against the CPU EP: 0.074; in one pass of 24: 0.0 exactly).
BROWSER_TOL = {"webgpu": 1e-3, "wasm": 0.25}
PROMPT = "What does the assert statement do?"
STEPS = {"wasm": 24, "webgpu": 6}  # WebGPU over SwiftShader: ~1 s per one-token pass


@pytest.fixture(scope="module")
def web_art(artifacts, trained_qwen2) -> Path:
    why = browser_missing()
    if why:
        pytest.skip(why)
    return artifacts.get("tiny-qwen2/web-int4", trained_qwen2)


@pytest.fixture(scope="module")
def browser(web_art):
    with chromium() as b:
        yield b


@pytest.fixture(scope="module")
def url(web_art):
    with serving(web_art) as u:
        yield u


def graph_of(art: Path, backend: str) -> tuple[str, int | None]:
    """The decoder graph the page loads on `backend` and the most tokens it feeds it per pass (web/config.json)."""
    import json

    entry = json.loads((art / "web" / "config.json").read_text())["backends"][backend]
    return entry["model"], entry["max_step_tokens"]


def python_greedy(art: Path, ids: list[int], n: int, backend: str = "webgpu"):
    """The Python runner (CPU EP) on the graph the page runs on `backend`, fed as the page feeds it."""
    from edgeqwen.runtime.runner import Runner, Sampling

    graph, per_pass = graph_of(art, backend)
    r = Runner(art, providers="cpu", decoder_file=graph)
    r.max_step_tokens = per_pass
    t0 = time.perf_counter()
    recs = list(r.stream(ids, Sampling(max_new_tokens=n, ignore_eos=True, keep_logits=True)))
    seconds = time.perf_counter() - t0
    return [t for rec in recs for t in rec.token_ids], np.stack([rec.logits for rec in recs]), recs[-1], seconds, r


def test_the_manifest_covers_every_web_file(web_art):
    import json

    listed = json.loads((web_art / "manifest.json").read_text())["files"]
    on_disk = {p.relative_to(web_art).as_posix() for p in (web_art / "web").rglob("*") if p.is_file()}
    assert on_disk and on_disk <= set(listed)
    assert {"web/index.html", "web/edgeqwen.mjs", "web/config.json", "web/vendor/ort-wasm-simd-threaded.wasm"} <= on_disk
    assert {"model.wasm.onnx", "model.wasm.onnx.data", "lm_head.wasm.onnx"} <= set(listed)  # WebAssembly's own graph
    assert not any(verify_artifact(web_art).values())


@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
def test_the_page_computes_what_the_python_runner_does(web_art, browser, url, backend):
    page = open_page(browser, url, backend)
    assert page.evaluate("window.edgeqwenModel.backend") == backend
    assert page.evaluate("self.crossOriginIsolated")
    # WebAssembly runs the int8 graph (onnxruntime-web has no fast WebAssembly MatMulNBits), WebGPU the decoder graph
    assert page.evaluate("window.edgeqwenModel.graph") == {"wasm": "model.wasm.onnx", "webgpu": "model.onnx"}[backend]
    _, _, _, _, runner = python_greedy(web_art, [1], 1)
    ids = runner.encode(runner.apply_chat_template([{"role": "user", "content": PROMPT}]))
    js_ids = page.evaluate("(p) => Array.from(window.edgeqwenModel.encodeChat([{role: 'user', content: p}]))", PROMPT)
    assert js_ids == ids  # transformers.js tokenizer + chat template = Python tokenizers + jinja2
    n = STEPS[backend]
    got = page_greedy(page, ids, n)
    ref_toks, ref_logits, last, py_s, _ = python_greedy(web_art, ids, n, backend)
    agreement = compare_runs(ref_logits, ref_toks, np.array(got["logits"], np.float32), got["tokens"],
                             BROWSER_TOL[backend])
    stats = got["stats"]
    print(f"browser {backend} vs Python runner (CPU EP, same graph): {agreement.summary()}; tokens equal: "
          f"{got['tokens'] == ref_toks}; page decode {stats['tokensPerSecond']:.1f} tok/s, prefill "
          f"{stats['prefillTokensPerSecond']:.1f} tok/s ({stats['promptTokens']} tokens); Python runner decode "
          f"{last.decode_tps:.1f} tok/s, prefill {last.prefill_tps:.1f} tok/s")
    assert agreement.ok, agreement.summary()
    assert agreement.diverged_at is not None or got["tokens"] == ref_toks  # equal unless parted at a near-tie
    page.close()


def test_qwen3_on_wasm_computes_what_the_python_runner_does(web_art, artifacts, trained_qwen3, browser):
    """Qwen3 (q/k norms; a chat template with thinking) through the same page on WebAssembly."""
    art = artifacts.get("tiny-qwen3/web-int4", trained_qwen3)
    with serving(art) as url3:
        page = open_page(browser, url3, "wasm")
        _, _, _, _, runner = python_greedy(art, [1], 1)
        ids = runner.encode(runner.apply_chat_template([{"role": "user", "content": PROMPT}]))
        js_ids = page.evaluate("(p) => Array.from(window.edgeqwenModel.encodeChat([{role: 'user', content: p}]))",
                               PROMPT)
        assert js_ids == ids
        got = page_greedy(page, ids, 16)
        ref_toks, ref_logits, *_ = python_greedy(art, ids, 16, "wasm")
        agreement = compare_runs(ref_logits, ref_toks, np.array(got["logits"], np.float32), got["tokens"],
                                 BROWSER_TOL["wasm"])
        print(f"tiny-qwen3 browser wasm vs Python runner: {agreement.summary()}; tokens equal: {got['tokens'] == ref_toks}")
        assert agreement.ok and (agreement.diverged_at is not None or got["tokens"] == ref_toks), agreement.summary()
        page.close()


def test_a_chat_turn_appears_in_the_page(web_art, browser, url):
    """`auto`: WebGPU where the adapter has what the graph needs (SwiftShader does: fp32 graph), said on the page."""
    page = open_page(browser, url, "auto", max_tokens=6)
    assert page.inner_text("#backend").startswith("backend: WebGPU")
    answer, tps = chat_turn(page, PROMPT)
    shot = log_dir() / "browser-chat-webgpu.png"
    page.screenshot(path=str(shot), full_page=True)
    print(f"screenshot: {shot}; answer {answer!r}; {tps}")
    assert answer.strip() and "tok/s" in tps and "webgpu" in tps
    assert page.locator(".msg.user").inner_text() == PROMPT
    page.close()


def test_a_browser_without_webgpu_gets_wasm_and_is_told(web_art, browser, url):
    page = browser.new_page()
    page.add_init_script("Object.defineProperty(Navigator.prototype, 'gpu', {get: () => undefined})")
    page.goto(f"{url}?backend=auto")
    page.wait_for_function("['ready', 'error'].includes(document.body.dataset.state)", timeout=120000)
    assert page.inner_text("#backend") == "backend: WebAssembly (no WebGPU adapter in this browser)"
    page.close()


def test_wasm_speed_beside_the_python_runner(web_art, browser, url):
    """Same machine, same run, same prompt and greedy tokens: the page on WebAssembly (threads as the page picks them)
    and the Python runner (onnxruntime CPU EP), each warmed once; printed, not asserted (machines differ)."""
    page = open_page(browser, url, "wasm")
    _, _, _, _, runner = python_greedy(web_art, [1], 1)
    ids = runner.encode(runner.apply_chat_template([{"role": "user", "content": PROMPT}]))
    page_greedy(page, ids, 8, logits=False)
    got = page_greedy(page, ids, 64, logits=False)["stats"]
    python_greedy(web_art, ids, 8, "wasm")
    last = python_greedy(web_art, ids, 64, "wasm")[2]
    threads = page.evaluate("(async () => (await import('./vendor/ort.wasm.min.mjs')).env.wasm.numThreads)()")
    print(f"tiny-qwen2/web-int4, {len(ids)}-token prompt + 64 tokens: page WASM ({threads} threads) prefill "
          f"{got['prefillTokensPerSecond']:.0f} tok/s, decode {got['tokensPerSecond']:.1f} tok/s; Python runner (CPU EP) "
          f"prefill {last.prefill_tps:.0f} tok/s, decode {last.decode_tps:.1f} tok/s")
    assert got["tokens"] == 64
    page.close()


def test_wasm_chat_turn_in_the_page(web_art, browser, url):
    page = open_page(browser, url, "wasm", max_tokens=64)
    assert page.inner_text("#backend") == "backend: WebAssembly (asked for)"
    answer, tps = chat_turn(page, PROMPT)
    page.screenshot(path=str(log_dir() / "browser-chat-wasm.png"), full_page=True)
    print(f"wasm chat: {answer!r}; {tps}")
    assert answer.strip() and "tok/s" in tps
    page.close()


API_EXAMPLE = """async (base) => {
  const { load } = await import(base + 'web/edgeqwen.mjs');
  const model = await load(base, { backend: 'wasm' });
  const messages = [{ role: 'user', content: 'What does the assert statement do?' }];
  let answer = '', pieces = 0;
  for await (const text of model.generate(messages, { maxNewTokens: 12 })) { answer += text; pieces++; }
  return { answer, pieces, stats: model.stats, reason: model.reason };
}"""


def test_the_readme_javascript_api_example(web_art, browser, url):
    """load(url) -> generate(messages) as an async iterator of text, imported as the README shows (same origin)."""
    page = browser.new_page()
    page.goto(url + "config.json")  # any page of the served origin; the API needs no DOM of ours
    base = url.rsplit("web/", 1)[0]
    got = page.evaluate(API_EXAMPLE, base)
    print(f"API: {got['answer']!r} in {got['pieces']} pieces; {got['stats']}")
    assert got["answer"].strip() and got["pieces"] >= 2 and got["stats"]["tokens"] >= 1
    assert got["stats"]["finishReason"] in ("stop", "length") and got["reason"] == "WebAssembly (asked for)"
    page.close()


def test_a_page_opened_from_a_file_says_to_use_edgeqwen_web(web_art, browser):
    page = browser.new_page()
    page.goto((web_art / "web" / "index.html").as_uri())
    page.wait_for_function("document.body.dataset.state === 'file'", timeout=30000)
    assert "edgeqwen web" in page.inner_text("#status")
    page.close()
