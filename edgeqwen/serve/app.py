"""OpenAI-compatible HTTP server (Foundry Local-style) on the standard library's threading server.

Endpoints: GET /v1/models, POST /v1/chat/completions (JSON or SSE), POST /v1/completions,
Foundry Local management (GET /openai/models, /openai/loadedmodels, /openai/load/NAME,
/openai/unload/NAME, /openai/status), GET /health, GET /metrics (Prometheus text).
The server only calls Runner.stream(); one generation runs per model at a time (others queue).
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..runtime.runner import RunnerError, Sampling
from .metrics import Metrics
from .models import ModelCache
from .protocol import ApiError, chat_prompt, parse_completion, parse_chat


class RateLimiter:
    """Sliding one-minute window of requests per API key."""

    def __init__(self, per_minute: int | None):
        self.per_minute = per_minute
        self.hits: dict[str, deque] = defaultdict(deque)
        self.lock = threading.Lock()

    def allow(self, key: str) -> bool:
        if not self.per_minute:
            return True
        now = time.monotonic()
        with self.lock:
            q = self.hits[key]
            while q and now - q[0] > 60:
                q.popleft()
            if len(q) >= self.per_minute:
                return False
            q.append(now)
            return True


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, addr, cache: ModelCache, api_key: str | None = None, rate_limit: int | None = None,
                 max_body: int = 1 << 20):
        super().__init__(addr, Handler)
        self.cache = cache
        self.api_key = api_key
        self.limiter = RateLimiter(rate_limit)
        self.max_body = max_body
        self.metrics = Metrics()
        self.started = time.time()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: EdgeServer
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):  # quiet; /metrics has the numbers
        pass

    # ---- plumbing -------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict, close: bool = False) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(body)

    def _send_text(self, status: int, text: str, ctype: str = "text/plain; version=0.0.4") -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, err: ApiError) -> None:
        # The request body may be unread (auth, size and routing errors come first): close the
        # connection rather than let a keep-alive client's next request parse its leftovers.
        self.server.metrics.count_error(err.status)
        self._send_json(err.status, err.payload(), close=True)

    def _auth(self) -> None:
        key = self.server.api_key
        header = self.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        if key and given != key:
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")
        if not self.server.limiter.allow(given or self.client_address[0]):
            raise ApiError(429, f"rate limit of {self.server.limiter.per_minute} requests per minute exceeded; retry later",
                           "rate_limit_error", code="rate_limit_exceeded")

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > self.server.max_body:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {self.server.max_body}",
                           "invalid_request_error")
        raw = self.rfile.read(length) if length else b""
        try:
            data = json.loads(raw or b"null")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"request body is not valid JSON: {exc}", "invalid_request_error") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", "invalid_request_error")
        return data

    def _model(self, name):
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required (GET /v1/models lists them)", "invalid_request_error", param="model")
        try:
            return self.server.cache.load(name)
        except KeyError:
            known = ", ".join(self.server.cache.models)
            raise ApiError(404, f"model {name!r} not found; available: {known}", "invalid_request_error",
                           param="model", code="model_not_found") from None
        except RunnerError as exc:
            raise ApiError(500, f"model {name!r} failed to load: {exc}", "server_error") from None

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path in ("/health", "/v1/health"):
                return self._send_json(200, {"status": "ok"})
            if path == "/metrics":
                return self._send_text(200, self.server.metrics.render(self.server.cache.loaded()))
            self._auth()
            if method == "GET" and path == "/v1/models":
                return self._send_json(200, {"object": "list", "data": [
                    {"id": n, "object": "model", "created": m.created, "owned_by": "edgeqwen"}
                    for n, m in self.server.cache.models.items()]})
            if method == "GET" and path == "/openai/models":
                return self._send_json(200, list(self.server.cache.models))
            if method == "GET" and path == "/openai/loadedmodels":
                return self._send_json(200, self.server.cache.loaded())
            if method == "GET" and path == "/openai/status":
                return self._send_json(200, {"endpoints": [self.server.url], "modelDirPath": "",
                                             "loadedModels": self.server.cache.loaded(),
                                             "uptimeSeconds": round(time.time() - self.server.started, 1)})
            m = re.fullmatch(r"/openai/(load|unload)/(.+)", path)
            if method == "GET" and m:
                from urllib.parse import unquote

                name = unquote(m.group(2))
                if m.group(1) == "load":
                    self._model(name)
                    return self._send_json(200, {"model": name, "loaded": True})
                try:
                    self.server.cache.unload(name)
                except KeyError:
                    raise ApiError(404, f"model {name!r} not found", "invalid_request_error", code="model_not_found") from None
                return self._send_json(200, {"model": name, "loaded": False})
            if method == "POST" and path == "/v1/chat/completions":
                return self._completion(chat=True)
            if method == "POST" and path == "/v1/completions":
                return self._completion(chat=False)
            raise ApiError(404, f"no route for {method} {path}", "invalid_request_error")
        except ApiError as err:
            self._error(err)
        except (BrokenPipeError, ConnectionResetError):
            pass

    # ---- completions ----------------------------------------------------------------------
    def _completion(self, chat: bool) -> None:
        body = self._body()
        req = parse_chat(body) if chat else parse_completion(body)
        served = self._model(req.model)
        runner = served.runner
        prompt = chat_prompt(runner, req) if chat else req.prompt
        ids = runner.encode(prompt)
        if not ids:
            raise ApiError(400, "the prompt is empty", "invalid_request_error", param="messages" if chat else "prompt")
        if len(ids) + 1 > runner.context_length:
            raise ApiError(400, f"prompt has {len(ids)} tokens; the model's context is {runner.context_length} tokens",
                           "invalid_request_error", param="messages" if chat else "prompt", code="context_length_exceeded")
        sampling = Sampling(max_new_tokens=min(req.max_tokens, runner.context_length - len(ids)),
                            temperature=req.temperature, top_p=req.top_p, seed=req.seed, stop=tuple(req.stop))
        try:
            sampling.validate()
        except RunnerError as exc:
            raise ApiError(400, str(exc), "invalid_request_error") from None
        thinking_open = chat and prompt.rstrip().endswith("<think>")  # raw completions return raw text
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        t0 = time.perf_counter()
        with served.lock:
            if served.runner is None:  # unloaded while we queued: load again
                served = self._model(req.model)
                runner = served.runner
            stream = runner.stream(ids, sampling, thinking_open=thinking_open)
            if req.stream:
                self._sse(stream, rid, created, req.model, chat, len(ids), req.include_usage)
            else:
                self._whole(stream, rid, created, req.model, chat, len(ids))
        self.server.metrics.observe(req.model, time.perf_counter() - t0)

    def _whole(self, stream, rid, created, model, chat, n_prompt):
        text, reasoning, n, finish = [], [], 0, "stop"
        for rec in stream:
            text.append(rec.text)
            reasoning.append(rec.reasoning)
            n = rec.generated_tokens
            finish = rec.finish_reason or finish
            self.server.metrics.tokens(model, 1)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
        content = "".join(text)
        if chat:
            message = {"role": "assistant", "content": content}
            if "".join(reasoning).strip():
                message["reasoning_content"] = "".join(reasoning).strip()
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        self._send_json(200, {"id": rid, "object": obj, "created": created, "model": model,
                              "choices": [choice], "usage": usage})

    def _sse(self, stream, rid, created, model, chat, n_prompt, include_usage):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        obj = "chat.completion.chunk" if chat else "text_completion"

        def send(payload) -> None:
            data = payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)
            self.wfile.write(f"data: {data}\n\n".encode())
            self.wfile.flush()

        def chunk(delta: dict, finish=None) -> dict:
            choice = ({"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None} if chat
                      else {"index": 0, "text": delta.get("content", ""), "finish_reason": finish, "logprobs": None})
            return {"id": rid, "object": obj, "created": created, "model": model, "choices": [choice]}

        n = 0
        try:
            if chat:
                send(chunk({"role": "assistant", "content": ""}))
            for rec in stream:
                n = rec.generated_tokens
                self.server.metrics.tokens(model, 1)
                delta = {}
                if rec.text:
                    delta["content"] = rec.text
                if rec.reasoning:
                    delta["reasoning_content"] = rec.reasoning
                if delta or rec.finish_reason:
                    send(chunk(delta, rec.finish_reason))
            if include_usage:
                send({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                      "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}})
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError):
            self.server.metrics.disconnects += 1  # client went away: closing the generator stops generation
        finally:
            stream.close()


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                rate_limit: int | None = None, threads: int | None = None, max_body: int = 1 << 20) -> EdgeServer:
    return EdgeServer((host, port), ModelCache(root, threads=threads), api_key=api_key, rate_limit=rate_limit, max_body=max_body)
