"""The server cannot be talked out of answering: every malformed request gets an OpenAI-style JSON error, bodies
and connections are bounded, rate limits cannot be dodged, broken or vanished artifacts are reported, and the request
parser survives arbitrary JSON (property-based)."""

from __future__ import annotations

import json
import shutil
import socket
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgeqwen.package import add_to_manifest, verify_artifact
from edgeqwen.serve.errors import ApiError
from edgeqwen.serve.limits import RateLimiter
from edgeqwen.serve.protocol import parse_chat, parse_completion
from tests.helpers.serving import QWEN2, one_model, raw, raw_bytes, serving, status_and_error  # noqa: F401 - fixture


@pytest.fixture(scope="module")
def server(one_model):  # noqa: F811
    with serving(one_model) as s:
        yield s


CHAT = {"model": QWEN2, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.mark.parametrize("headers, status, needle", [
    ("Content-Length: -1", 400, "bad Content-Length"),
    ("Content-Length: abc", 400, "bad Content-Length"),
    ("Transfer-Encoding: chunked", 411, "chunked request bodies are not accepted"),
    ("Content-Length: 99999999999", 413, "exceeds the limit"),
])
def test_content_length_is_validated(server, headers, status, needle):
    reply = raw_bytes(server, f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n{headers}\r\n\r\n{{}}".encode())
    got, err = status_and_error(reply)
    assert got == status and needle in err["message"]


@pytest.mark.parametrize("body, needle", [
    ({**CHAT, "seed": -1}, "'seed' is out of range"),
    ({**CHAT, "temperature": 1e-310}, "temperature must be 0 (greedy) or in [0.0001, 5]"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "text", "text": 5}]}]}, "needs a string 'text'"),
    ({**CHAT, "messages": [{"role": "user", "content": "\ud800"}]}, "not valid Unicode"),
    (b"[" * 100_000, "nested too deeply"),
    (b'{"model": ' + b"7" * 5000 + b"}", "not valid JSON"),
])
def test_inputs_that_used_to_drop_the_connection(server, body, needle):
    data = body if isinstance(body, bytes) else json.dumps(body).encode()  # json.dumps keeps "\ud800" as an escape
    got, payload = raw(server, "POST", "/v1/chat/completions", data)
    assert got == 400 and needle in json.loads(payload)["error"]["message"]
    assert raw(server, "GET", "/health")[0] == 200


def test_unknown_methods_and_bad_request_lines_answer_json(server):
    got, payload = raw(server, "PUT", "/v1/models", b"")
    assert got == 405 and "not allowed" in json.loads(payload)["error"]["message"]
    got, err = status_and_error(raw_bytes(server, b"BREW /pot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"))
    assert got == 405 and "BREW" in err["message"]


def test_broken_and_vanished_artifacts(tmp_path, artifacts, trained_qwen2):
    root = tmp_path / "models"
    for name in ("a", "b", ".b.building-123"):
        shutil.copytree(artifacts.get("tiny-qwen2/cpu-x86_64-fp32", trained_qwen2), root / name)
        info = json.loads((root / name / "inference_model.json").read_text())
        (root / name / "inference_model.json").write_text(json.dumps({**info, "Name": name}))
        add_to_manifest(root / name, ["inference_model.json"])  # renamed and intact: the test breaks them below
        assert not any(verify_artifact(root / name).values())
    with serving(root) as s:  # the hidden work folder is not served (was: "two artifacts are named ...")
        assert sorted(m["id"] for m in json.loads(raw(s, "GET", "/v1/models")[1])["data"]) == ["a", "b"]
        (root / "a" / "genai_config.json").write_text("{broken")
        got, payload = raw(s, "POST", "/v1/chat/completions", {**CHAT, "model": "a"})
        message = json.loads(payload)["error"]["message"]
        assert got == 500 and "listed but failed to load" in message
        assert str(root) not in payload.decode() and "genai_config" not in message  # no server paths in errors
        shutil.rmtree(root / "b")
        got, payload = raw(s, "GET", "/v1/models")
        assert got == 200 and len(json.loads(payload)["data"]) == 2  # still answers for everyone


def test_rate_limit_cannot_be_dodged_and_says_when_to_retry(one_model):  # noqa: F811
    with serving(one_model, rate_limit=5) as s:
        codes = [raw(s, "GET", "/v1/models", headers={"Authorization": f"Bearer invented-{i}"})[0] for i in range(20)]
        assert codes.count(200) == 5 and codes[5:] == [429] * 15  # keyed on the address, not invented tokens
        host, port = s.server_address[:2]
        import http.client

        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("GET", "/v1/models")
        resp = conn.getresponse()
        assert resp.status == 429 and 1 <= int(resp.getheader("Retry-After")) <= 61
        conn.close()
    with serving(one_model, rate_limit=2, api_key="k") as keyed:
        wrong = [raw(keyed, "GET", "/v1/models", headers={"Authorization": "Bearer nope"})[0] for _ in range(4)]
        assert wrong == [401, 401, 429, 429]  # failed attempts are limited too
        assert raw(keyed, "GET", "/v1/models", headers={"Authorization": "Bearer k"})[0] == 200  # the key's own bucket
    with pytest.raises(ValueError, match="must be >= 1"):
        RateLimiter(0)
    limiter = RateLimiter(1)
    for i in range(RateLimiter.MAX_CLIENTS + 500):
        limiter.retry_after(f"addr:{i}")
    assert len(limiter.hits) <= RateLimiter.MAX_CLIENTS  # bounded table


def test_connections_are_bounded_and_slow_clients_time_out(one_model):  # noqa: F811
    with serving(one_model, max_connections=4, request_timeout=1.0) as s:
        host, port = s.server_address[:2]
        slow = [socket.create_connection((host, port), timeout=5) for _ in range(4)]
        for sock in slow:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never finishes its headers
        deadline = time.time() + 10
        while sum(s.open_connections.values()) < 4 and time.time() < deadline:  # until the server holds all four
            time.sleep(0.02)
        got, err = status_and_error(raw_bytes(s, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", timeout=5))
        assert got == 503 and "too many open connections" in err["message"]
        deadline = time.time() + 15  # the slow clients are dropped after the 1 s request deadline
        while s.open_connections and time.time() < deadline:
            time.sleep(0.05)
        assert raw(s, "GET", "/health")[0] == 200
        for sock in slow:
            assert sock.recv(1000).startswith(b"HTTP/1.1 408 ")
            sock.close()


def test_cors_is_opt_in(one_model):  # noqa: F811
    with serving(one_model, cors_origin="http://localhost:8080") as s:
        host, port = s.server_address[:2]
        import http.client

        conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.request("OPTIONS", "/v1/chat/completions", headers={"Origin": "http://localhost:8080"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 204 and resp.getheader("Access-Control-Allow-Origin") == "http://localhost:8080"
        assert "POST" in resp.getheader("Access-Control-Allow-Methods")
        conn.close()


def test_metric_labels_are_escaped():
    from edgeqwen.serve.metrics import Metrics

    m = Metrics()
    m.observe('evil"} 1\nedgeqwen_pwned 1\n{x="', "completed", 0.0, 0.1)
    text = m.render([])
    assert "\nedgeqwen_pwned 1" not in text and '\\"} 1\\nedgeqwen_pwned 1\\n{x=\\"' in text


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
                    max_leaves=25)
KEYS = st.sampled_from(["model", "messages", "prompt", "max_tokens", "temperature", "top_p", "seed", "stop", "n",
                        "stream", "stream_options", "chat_template_kwargs", "max_completion_tokens"])


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(KEYS, JSON, max_size=8), st.lists(st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "tool", 5]), "content": JSON}), max_size=3))
def test_request_parser_only_ever_raises_api_errors(body, messages):
    for parse, extra in ((parse_chat, {"messages": messages} if messages else {}), (parse_completion, {})):
        try:
            parse({**body, **extra})
        except ApiError as err:
            assert 400 <= err.status < 500 and err.message


def test_fields_are_honoured_refused_or_reported_never_dropped(server):
    import http.client

    host, port = server.server_address[:2]
    for field, value in (("functions", [{"name": "f"}]), ("logit_bias", {"5": 10}), ("logprobs", True)):
        got, payload = raw(server, "POST", "/v1/chat/completions", {**CHAT, field: value})
        err = json.loads(payload)["error"]
        assert got == 400 and err["param"] == field and err["code"] == "unsupported_field", err
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"},
                 body=json.dumps({**CHAT, "user": "u1", "presence_penalty": 0, "x\r\nInjected: 1": 1}))
    resp = conn.getresponse()
    resp.read()
    assert resp.status == 200 and resp.getheader("X-Edgeqwen-Ignored") == "presence_penalty, user, 1 more with unusual names"
    assert resp.getheader("Injected") is None
    conn.close()
    got, _ = raw(server, "POST", "/v1/chat/completions", {**CHAT, "logprobs": False, "tools": []})
    assert got == 200  # the "off" values of unsupported features are fine


def test_latency_and_ttft_histograms(server):
    assert raw(server, "POST", "/v1/chat/completions", CHAT)[0] == 200
    text = raw(server, "GET", "/metrics")[1].decode()
    for name in ("edgeqwen_request_duration_seconds", "edgeqwen_time_to_first_token_seconds"):
        assert f"# TYPE {name} histogram" in text
        inf = next(line for line in text.splitlines() if line.startswith(f"{name}_bucket{{")
                   and 'le="+Inf"' in line and f'model="{QWEN2}"' in line)
        count = next(line for line in text.splitlines() if line.startswith(f'{name}_count{{model="{QWEN2}"}}'))
        assert float(inf.split()[-1]) == float(count.split()[-1]) >= 1
