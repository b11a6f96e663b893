"""The OpenAI-compatible server, on an ephemeral port, with the real `openai` client and plain HTTP."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import urllib.request

import openai
import pytest

from edgeqwen.runtime import Runner
from tests.helpers.serving import QWEN2, QWEN3, cache_dir, client, raw, serving, start  # noqa: F401 - cache_dir: fixture


@pytest.fixture(scope="module")
def server(cache_dir):  # noqa: F811
    with serving(cache_dir) as s:
        yield s


def test_models_list(server):
    ids = [m.id for m in client(server).models.list().data]
    assert ids == [QWEN2, QWEN3]


def test_chat_non_streaming_matches_runner(server, cache_dir):
    msgs = [{"role": "user", "content": "What does the assert statement do?"}]
    r = client(server).chat.completions.create(model=QWEN2, messages=msgs, max_tokens=12, temperature=0)
    runner = Runner(cache_dir / "tiny-qwen2")
    ids = runner.encode(runner.apply_chat_template(msgs))
    direct = runner.generate(ids, runner.default_sampling(max_new_tokens=12))  # the recipe's repetition penalty too
    assert r.choices[0].message.content == direct.text
    assert r.choices[0].finish_reason == direct.finish_reason
    assert r.usage.prompt_tokens == len(ids) and r.usage.completion_tokens == len(direct.token_ids)


def test_chat_streaming_sse(server):
    stream = client(server).chat.completions.create(
        model=QWEN2, messages=[{"role": "user", "content": "Explain classes."}], max_tokens=10, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert text and finishes == ["length"]
    assert chunks[-1].usage.completion_tokens == 10
    whole = client(server).chat.completions.create(
        model=QWEN2, messages=[{"role": "user", "content": "Explain classes."}], max_tokens=10)
    assert whole.choices[0].message.content == text


def test_sse_ends_with_done(server):
    status, body = raw(server, "POST", "/v1/chat/completions",
                       {"model": QWEN2, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True})
    assert status == 200 and body.decode().rstrip().endswith("data: [DONE]")


def test_completions_and_seeded_sampling(server):
    c = client(server)
    a = c.completions.create(model=QWEN2, prompt="The for statement", max_tokens=8, temperature=0.9, seed=7)
    b = c.completions.create(model=QWEN2, prompt="The for statement", max_tokens=8, temperature=0.9, seed=7)
    assert a.choices[0].text == b.choices[0].text and a.usage.completion_tokens == 8


def test_qwen3_thinking_switch(server, cache_dir):
    r = client(server).chat.completions.create(model=QWEN3, messages=[{"role": "user", "content": "hi"}], max_tokens=6,
                                               extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    runner = Runner(cache_dir / "tiny-qwen3")
    prompt = runner.apply_chat_template([{"role": "user", "content": "hi"}], enable_thinking=False)
    assert prompt.endswith("<think>\n\n</think>\n\n")  # the switch reached the template
    assert r.choices[0].message.content == runner.generate(runner.encode(prompt),
                                                           runner.default_sampling(max_new_tokens=6)).text


def test_reasoning_content_is_returned_apart(cache_dir, tmp_path):
    """A template that opens <think> in the generation prompt (forced-thinking Qwen3 variants): what the model
    writes before </think> is reasoning_content, never content."""
    from edgeqwen.package import sha256_file

    art = tmp_path / "thinker"
    shutil.copytree(cache_dir / "tiny-qwen3", art)
    tpl = art / "chat_template.jinja"
    tpl.write_text(tpl.read_text().replace("{{- '<|im_start|>assistant\\n' }}", "{{- '<|im_start|>assistant\\n<think>\\n' }}"))
    manifest = json.loads((art / "manifest.json").read_text())
    manifest["files"]["chat_template.jinja"] = {"sha256": sha256_file(tpl), "size": tpl.stat().st_size}
    (art / "manifest.json").write_text(json.dumps(manifest))
    s = start(art)
    try:
        c = client(s)
        r = c.chat.completions.create(model=QWEN3, messages=[{"role": "user", "content": "hi"}], max_tokens=8)
        msg = r.choices[0].message
        assert msg.reasoning_content and not msg.content
        chunks = list(c.chat.completions.create(model=QWEN3, messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                                stream=True))
        deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
        assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas).strip() == msg.reasoning_content
        assert not "".join(d.content or "" for d in deltas)
    finally:
        s.shutdown()
        s.server_close()


def test_management_endpoints_and_metrics(server):
    assert raw(server, "GET", "/health")[0] == 200
    client(server).chat.completions.create(model=QWEN2, messages=[{"role": "user", "content": "a"}], max_tokens=2)
    assert QWEN2 in json.loads(raw(server, "GET", "/openai/loadedmodels")[1])
    status, body = raw(server, "GET", f"/openai/unload/{QWEN2}")
    assert status == 200 and QWEN2 not in json.loads(raw(server, "GET", "/openai/loadedmodels")[1])
    assert raw(server, "GET", f"/openai/load/{QWEN2}")[0] == 200
    assert QWEN2 in json.loads(raw(server, "GET", "/openai/status")[1])["loadedModels"]
    metrics = raw(server, "GET", "/metrics")[1].decode()
    assert f'edgeqwen_requests_total{{model="{QWEN2}",outcome="completed"}}' in metrics
    assert "edgeqwen_tokens_per_second" in metrics and f'edgeqwen_queue_seconds_total{{model="{QWEN2}"}}' in metrics
    # the provider each loaded model's session got (a CPU artifact: its own provider, no fallback)
    assert (f'edgeqwen_model_provider{{fallback="false",model="{QWEN2}",provider="CPUExecutionProvider"}} 1.0'
            in metrics), [line for line in metrics.splitlines() if "provider" in line]


@pytest.mark.parametrize("body, status, needle", [
    (b"{not json", 400, "not valid JSON"),
    ({"model": QWEN2, "messages": "hi"}, 400, "'messages' must be a non-empty list"),
    ({"model": QWEN2, "messages": [{"role": "user", "content": "x"}], "max_tokens": "ten"}, 400, "'max_tokens'"),
    ({"model": QWEN2, "messages": [{"role": "user", "content": "x"}], "temperature": 9}, 400, "'temperature' is out of range"),
    ({"model": QWEN2, "messages": [{"role": "user", "content": "x"}], "n": 2}, 400, "only n=1"),
    ({"model": "gpt-5", "messages": [{"role": "user", "content": "x"}]}, 404, "model 'gpt-5' not found"),
    ({"model": QWEN2, "messages": [{"role": "user", "content": "word " * 3000}]}, 400, "context is 1024 tokens"),
])
def test_bad_requests_get_openai_errors_and_server_survives(server, body, status, needle):
    got, payload = raw(server, "POST", "/v1/chat/completions", body)
    err = json.loads(payload)["error"]
    assert got == status and needle in err["message"] and err["type"]
    assert raw(server, "GET", "/health")[0] == 200


def test_oversized_body_is_413(cache_dir):
    s = start(cache_dir, max_body=1000)
    try:
        got, payload = raw(s, "POST", "/v1/completions", {"model": QWEN2, "prompt": "x" * 5000})
        assert got == 413 and "exceeds the limit" in json.loads(payload)["error"]["message"]
    finally:
        s.shutdown()
        s.server_close()


def test_api_key_and_rate_limit(cache_dir):
    s = start(cache_dir, api_key="sekret", rate_limit=3)
    try:
        with pytest.raises(openai.AuthenticationError):
            client(s, "wrong").models.list()
        ok = client(s, "sekret")
        for _ in range(2):
            ok.models.list()
        with pytest.raises(openai.RateLimitError):
            for _ in range(3):
                ok.models.list()
    finally:
        s.shutdown()
        s.server_close()


def test_concurrent_streams_do_not_mix(server, cache_dir):
    prompts = [f"Topic {i}: the {w} statement" for i, w in enumerate(["assert", "pass", "del", "return", "yield", "raise"])]
    runner = Runner(cache_dir / "tiny-qwen2")
    expected = {}
    for p in prompts:
        expected[p] = runner.generate(runner.encode(p), runner.default_sampling(max_new_tokens=10, temperature=0.8,
                                                                              seed=3)).text
    results, errors = {}, []

    def worker(p):
        try:
            s = client(server).completions.create(model=QWEN2, prompt=p, max_tokens=10, temperature=0.8, seed=3, stream=True)
            results[p] = "".join(c.choices[0].text for c in s)
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results == expected


def test_client_disconnect_stops_generation(server):
    host, port = server.server_address[:2]
    req = urllib.request.Request(server.url + "/v1/completions", method="POST",
                                 data=json.dumps({"model": QWEN2, "prompt": "x", "max_tokens": 900, "stream": True}).encode(),
                                 headers={"Content-Type": "application/json"})
    resp = urllib.request.urlopen(req, timeout=60)
    resp.readline()
    resp.close()  # go away mid-stream
    import time

    gone = f'edgeqwen_requests_total{{model="{QWEN2}",outcome="disconnected"}}'
    deadline = time.time() + 30
    while time.time() < deadline and gone not in raw(server, "GET", "/metrics")[1].decode():
        time.sleep(0.1)
    assert gone in raw(server, "GET", "/metrics")[1].decode()  # counted as disconnected, not as completed
    # and the model is free again right away
    r = client(server).completions.create(model=QWEN2, prompt="y", max_tokens=2)
    assert r.usage.completion_tokens == 2


def test_recipe_generation_defaults_reach_the_server(server, cache_dir):
    """Fields a request leaves out come from the artifact's recipe (its `generation:` block in genai_config), as
    onnxruntime-genai reads them: greedy unless the recipe samples, its top-k/top-p whenever a request samples, its
    repetition penalty always; the response header says what ran."""
    cfg = json.loads((cache_dir / "tiny-qwen2" / "genai_config.json").read_text())["search"]
    body = {"model": QWEN2, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    host, port = server.server_address[:2]
    for extra, want in (({}, {"temperature": "0"}), ({"temperature": 0.5}, {"temperature": "0.5"}),
                        ({"temperature": 0.5, "top_k": 3, "repetition_penalty": 1.2},
                         {"temperature": "0.5", "top_k": "3", "repetition_penalty": "1.2"})):
        conn = http.client.HTTPConnection(host, port, timeout=60)
        conn.request("POST", "/v1/chat/completions", body=json.dumps({**body, **extra}),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        got = dict(kv.split("=") for kv in resp.getheader("X-Edgeqwen-Sampling").split(", "))
        conn.close()
        defaults = {"top_p": f"{cfg['top_p']:g}", "top_k": str(cfg["top_k"]),
                    "repetition_penalty": f"{cfg['repetition_penalty']:g}"}
        assert resp.status == 200 and got == {**defaults, **want}, got
