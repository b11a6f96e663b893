"""OpenAI-compatible HTTP server (Foundry Local-style) on the standard library's threading server.

Endpoints: GET /v1/models, POST /v1/chat/completions (JSON or SSE), POST /v1/completions,
Foundry Local management (GET /openai/models, /openai/loadedmodels, /openai/load/NAME,
/openai/unload/NAME, /openai/status), GET /health, GET /metrics (Prometheus text).
The server only calls Runner.stream(); one generation runs per model at a time (others queue).
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import sys
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..runtime.runner import GrammarConstraint, RunnerError, Sampling
from .limits import RateLimiter
from .metrics import Metrics
from .models import ModelCache
from .protocol import ApiError, chat_prompt, parse_completion, parse_chat
from .tools import ToolCallParser, openai_call, tool_call_grammar


LOG = logging.getLogger("edgeqwen.serve")


class EdgeServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128  # listen backlog: a burst of clients queues instead of being reset (the default is 5)

    def __init__(self, addr, cache: ModelCache, api_key: str | None = None, rate_limit: int | None = None,
                 max_body: int = 1 << 20, max_connections: int = 256, cors_origin: str | None = None,
                 allow_local_images: bool = False):
        self.limiter = RateLimiter(rate_limit)
        self.allow_local_images = allow_local_images
        super().__init__(addr, Handler)
        self.cache = cache
        self.api_key = api_key
        self.max_body = max_body
        self.cors_origin = cors_origin
        self.metrics = Metrics()
        self.started = time.time()
        self._slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        """At most max_connections handler threads: beyond that, an immediate 503 instead of one more thread."""
        if not self._slots.acquire(blocking=False):
            body = json.dumps(ApiError(503, "server busy: too many open connections; retry shortly", "server_error",
                                       code="server_busy").payload()).encode()
            try:
                request.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                                b"Retry-After: 1\r\nConnection: close\r\nContent-Length: " + str(len(body)).encode()
                                + b"\r\n\r\n" + body)
            except OSError:
                pass
            self.metrics.count_error(503)
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def handle_error(self, request, client_address):
        """A client that went away is not a server error; anything else is logged, not printed raw."""
        exc = sys.exc_info()[1]
        if not isinstance(exc, (ConnectionError, TimeoutError)):
            LOG.error("connection from %s failed", client_address[0], exc_info=exc)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host}:{port}"


class Handler(BaseHTTPRequestHandler):
    server: EdgeServer
    protocol_version = "HTTP/1.1"
    timeout = 30  # seconds a client may take for its request line, headers and body (and to read each SSE event)

    def log_message(self, fmt, *args):  # quiet; /metrics has the numbers
        pass

    _ignored: tuple[str, ...] = ()
    _sampling_header: str | None = None

    def end_headers(self):
        if self.server.cors_origin:
            self.send_header("Access-Control-Allow-Origin", self.server.cors_origin)
        if self._ignored:  # request fields that changed nothing (see protocol.UNSUPPORTED for what is refused)
            self.send_header("X-Edgeqwen-Ignored", ", ".join(self._ignored)[:1000])
            self._ignored = ()
        if self._sampling_header:  # the sampling this completion ran with (request fields over artifact defaults)
            self.send_header("X-Edgeqwen-Sampling", self._sampling_header)
            self._sampling_header = None
        super().end_headers()

    def send_error(self, code, message=None, explain=None):
        """The standard library's own errors (bad request line, oversized headers, unknown method): JSON too."""
        self.close_connection = True
        try:
            self._send_json(code, ApiError(code, message or self.responses.get(code, ("error",))[0],
                                           "invalid_request_error").payload(), close=True)
        except OSError:
            pass

    # ---- plumbing -------------------------------------------------------------------------
    def _send_json(self, status: int, payload: dict, close: bool = False, headers: dict | None = None) -> None:
        body = json.dumps(payload, ensure_ascii=False).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
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
        self._send_json(err.status, err.payload(), close=True, headers=err.headers)

    def _auth(self) -> None:
        """A valid key is its own rate-limit bucket; anything else (no key configured, a wrong or missing key) is
        limited by client address, so failed attempts count and invented keys buy nothing."""
        key = self.server.api_key
        header = self.headers.get("Authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        valid = bool(key) and hmac.compare_digest(given.encode("utf-8", "replace"), key.encode())
        wait = self.server.limiter.retry_after(f"key:{given}" if valid else f"addr:{self.client_address[0]}")
        if wait is not None:
            raise ApiError(429, f"rate limit of {self.server.limiter.per_minute} requests per minute exceeded; retry "
                           f"in {wait} s", "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        if key and not valid:
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    def _body(self) -> dict:
        if self.headers.get("Transfer-Encoding"):
            raise ApiError(411, "chunked request bodies are not accepted: send the body with a Content-Length",
                           "invalid_request_error")
        raw_length = (self.headers.get("Content-Length") or "0").strip()
        if not raw_length.isdigit() or len(raw_length) > 12:
            raise ApiError(400, f"invalid Content-Length {raw_length[:40]!r}: a non-negative integer is required",
                           "invalid_request_error")
        length = int(raw_length)
        if length > self.server.max_body:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {self.server.max_body}",
                           "invalid_request_error")
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            raise ApiError(400, f"request body ended after {len(raw)} of {length} bytes", "invalid_request_error")
        try:
            data = json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5000-digit number, 100 000 nested [
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise ApiError(400, f"request body is not valid JSON: {reason}", "invalid_request_error") from None
        if not isinstance(data, dict):
            raise ApiError(400, "request body must be a JSON object", "invalid_request_error")
        return data

    def _model(self, name):
        if not isinstance(name, str) or not name:
            raise ApiError(400, "'model' is required (GET /v1/models lists them)", "invalid_request_error", param="model")
        try:
            self.server.cache.get(name)
        except KeyError:
            known = ", ".join(self.server.cache.models)
            raise ApiError(404, f"model {name!r} not found; available: {known}", "invalid_request_error",
                           param="model", code="model_not_found") from None
        try:
            return self.server.cache.load(name)
        except Exception as exc:  # noqa: BLE001 - a listed model whose files are broken or gone: say so, as a 500
            raise ApiError(500, f"model {name!r} is listed but failed to load: {exc}", "server_error",
                           code="model_load_failed") from None

    # ---- routing --------------------------------------------------------------------------
    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_OPTIONS(self):
        """CORS preflight (with --cors ORIGIN); otherwise no such route."""
        if not self.server.cors_origin:
            return self._error(ApiError(405, "OPTIONS is only answered with --cors", "invalid_request_error"))
        self.send_response(204)
        self.send_header("Access-Control-Allow-Methods", "GET, POST, OPTIONS")
        self.send_header("Access-Control-Allow-Headers", "Authorization, Content-Type")
        self.send_header("Access-Control-Max-Age", "600")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _method_not_allowed(self):
        self._error(ApiError(405, f"method {self.command} is not allowed; use GET or POST", "invalid_request_error"))

    do_PUT = do_DELETE = do_PATCH = do_HEAD = _method_not_allowed

    def _dispatch(self, method: str) -> None:
        path = self.path.split("?", 1)[0].rstrip("/")
        try:
            if path in ("/health", "/v1/health"):
                return self._send_json(200, {"status": "ok"})
            if path == "/metrics":
                return self._send_text(200, self.server.metrics.render(self.server.cache.loaded(),
                                                                     self.server.cache.engines()))
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
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True
        except Exception:  # noqa: BLE001 - never drop a connection without an answer
            rid = uuid.uuid4().hex[:12]
            LOG.exception("request %s (%s %s) failed", rid, method, path)
            try:
                self._error(ApiError(500, f"internal server error (request id {rid}; the server log has the details)",
                                     "server_error", code="internal_error"))
            except OSError:
                self.close_connection = True

    # ---- completions ----------------------------------------------------------------------
    def _completion(self, chat: bool) -> None:
        body = self._body()
        req = parse_chat(body) if chat else parse_completion(body)
        served = self._model(req.model)
        runner = served.runner
        if chat and (req.schema is not None or req.tool_choice not in ("none", "auto")) and runner.think_ids[0] is not None:
            if req.enable_thinking:  # a <think> block cannot be held to a grammar
                raise ApiError(400, "constrained output (response_format or a forced tool_choice) cannot be combined "
                               "with enable_thinking: true", "invalid_request_error", param="chat_template_kwargs")
            req.enable_thinking = False
        if req.images and runner.vision is None:
            raise ApiError(400, f"model {req.model!r} has no vision encoder: image_url parts need a Qwen2.5-VL artifact",
                           "invalid_request_error", param="messages")
        try:
            prompt = chat_prompt(runner, req) if chat else (
                runner.fim_prompt(req.prompt, req.suffix) if req.suffix is not None else req.prompt)
            ids = runner.encode(prompt)
        except RunnerError as exc:  # a template that refuses the messages, text that is not valid Unicode
            raise ApiError(400, str(exc), "invalid_request_error", param="messages" if chat else "prompt") from None
        if not ids:
            raise ApiError(400, "the prompt is empty", "invalid_request_error", param="messages" if chat else "prompt")
        prepared = self._images(runner, req, ids) if req.images else None
        if prepared is not None:
            ids = prepared[0]
        elif runner.vision is not None:
            try:
                runner.vision.check_text_only(ids)
            except RunnerError as exc:
                raise ApiError(400, str(exc), "invalid_request_error", param="messages" if chat else "prompt") from None
        if len(ids) + 1 > runner.context_length:
            raise ApiError(400, f"prompt has {len(ids)} tokens; the model's context is {runner.context_length} tokens",
                           "invalid_request_error", param="messages" if chat else "prompt", code="context_length_exceeded")
        sampling = runner.default_sampling(  # what the request leaves out comes from the artifact's recipe
            max_new_tokens=min(req.max_tokens, runner.context_length - len(ids)), temperature=req.temperature,
            top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty, seed=req.seed,
            stop=tuple(req.stop), constraint=self._constraint(runner, req) if chat else None)
        self._sampling_header = (f"temperature={sampling.temperature:g}, top_p={sampling.top_p:g}, "
                                 f"top_k={sampling.top_k}, repetition_penalty={sampling.repetition_penalty:g}")
        try:
            sampling.validate()
        except RunnerError as exc:
            raise ApiError(400, str(exc), "invalid_request_error") from None
        thinking_open = chat and prompt.rstrip().endswith("<think>")  # raw completions return raw text
        rid = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        queued = time.perf_counter()
        self._ignored = req.ignored
        parser = ToolCallParser({t["function"]["name"] for t in req.tools}) if (
            chat and req.tools and req.tool_choice != "none") else None
        engine = served.engine
        if engine is not None:  # continuous batching: this request decodes beside the others (images included)
            try:
                handle = engine.submit(ids, sampling, thinking_open=thinking_open, prepared=prepared and prepared[1])
            except RunnerError as exc:
                raise ApiError(503 if "unloaded" in str(exc) else 400, str(exc), "invalid_request_error") from None
            outcome = self._answer(_handle_stream(handle), rid, created, req, chat, len(ids), parser)
            queue_s = handle.queue_s
            ttft = queue_s + self._first_token_s if self._first_token_s is not None else None
            self.server.metrics.observe(req.model, outcome, queue_s=queue_s,
                                        generate_s=time.perf_counter() - queued - queue_s, ttft_s=ttft)
            return
        with served.lock:
            t0 = time.perf_counter()
            if served.runner is None:  # unloaded while we queued: load again
                served = self._model(req.model)
                runner = served.runner
            outcome = self._answer(runner.stream(ids, sampling, thinking_open=thinking_open,
                                                 prepared=prepared and prepared[1]), rid, created, req, chat, len(ids),
                                   parser)
        ttft = (t0 - queued) + self._first_token_s if self._first_token_s is not None else None
        self.server.metrics.observe(req.model, outcome, queue_s=t0 - queued, generate_s=time.perf_counter() - t0,
                                    ttft_s=ttft)

    def _images(self, runner, req, ids):
        """A chat request's image_url parts, decoded and encoded: (the prompt with each placeholder expanded to its
        image's tokens, the runner's prepared image inputs). Data URIs always; local paths only with
        --allow-local-images; never a network fetch."""
        from ..runtime.vision import ImageError, load_image

        images = []
        for n, url in enumerate(req.images):
            try:
                images.append(load_image(url, allow_files=self.server.allow_local_images))
            except ImageError as exc:
                raise ApiError(400, f"image {n + 1}: {exc}", "invalid_request_error", param="messages") from None
        try:
            return runner.vision.prepare(ids, images)
        except RunnerError as exc:
            raise ApiError(400, str(exc), "invalid_request_error", param="messages") from None

    def _answer(self, stream, rid, created, req, chat, n_prompt, parser) -> str:
        if req.stream:
            return self._sse(stream, rid, created, req.model, chat, n_prompt, req.include_usage, parser)
        self._whole(stream, rid, created, req.model, chat, n_prompt, parser)
        return "completed"

    _first_token_s: float | None = None  # the runner's time to first token of the request being answered

    @staticmethod
    def _constraint(runner, req):
        """The grammar a chat request's output must follow: its response_format schema, or a forced tool call."""
        if req.schema is None and req.tool_choice in ("none", "auto"):
            return None
        try:
            import llguidance  # noqa: F401
        except ImportError:
            raise ApiError(400, "structured output and forced tool calls need llguidance on the server "
                           "(pip install llguidance)", "invalid_request_error",
                           param="response_format" if req.schema is not None else "tool_choice") from None
        try:
            if req.schema is not None:
                return GrammarConstraint.json_schema(runner, req.schema)

            def literal(text):
                tid = runner.tokenizer.token_to_id(text)
                special = tid is not None and runner.ll_tokenizer().is_special_token(tid)
                return f"<[{tid}]>" if special else json.dumps(text)

            return GrammarConstraint(runner, tool_call_grammar(req.tools, req.tool_choice, literal))
        except RunnerError as exc:
            where = "response_format.json_schema" if req.schema is not None else "tools"
            raise ApiError(400, f"'{where}': {exc}", "invalid_request_error", param=where) from None

    @staticmethod
    def _tool_message(message: dict, parser, finish: str) -> str:
        """Fill a chat message from the tool-call parser; returns the finish reason (tool_calls when it called)."""
        calls = parser.calls
        if calls:
            message["tool_calls"] = [openai_call(c) for c in calls]
            if not message["content"]:
                message["content"] = None
        if parser.invalid:
            message["invalid_tool_calls"] = parser.invalid
        return "tool_calls" if calls and finish == "stop" else finish

    def _whole(self, stream, rid, created, model, chat, n_prompt, parser=None):
        text, reasoning, n, finish = [], [], 0, "stop"
        self._first_token_s = None
        for rec in stream:
            if self._first_token_s is None:
                self._first_token_s = rec.ttft_s
            text.append(rec.text)
            reasoning.append(rec.reasoning)
            n = rec.generated_tokens
            finish = rec.finish_reason or finish
            self.server.metrics.tokens(model, 1)
        usage = {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}
        content = "".join(text)
        if parser is not None:
            events = parser.feed(content) + parser.finish()
            content = "".join(e[1] for e in events if e[0] == "content").strip()
        if chat:
            message = {"role": "assistant", "content": content}
            if "".join(reasoning).strip():
                message["reasoning_content"] = "".join(reasoning).strip()
            if parser is not None:
                finish = self._tool_message(message, parser, finish)
            choice = {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": content, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        self._send_json(200, {"id": rid, "object": obj, "created": created, "model": model,
                              "choices": [choice], "usage": usage})

    def _sse(self, stream, rid, created, model, chat, n_prompt, include_usage, parser=None):
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
        outcome = "completed"
        try:
            if chat:
                send(chunk({"role": "assistant", "content": ""}))
            self._first_token_s = None
            for rec in stream:
                if self._first_token_s is None:
                    self._first_token_s = rec.ttft_s
                n = rec.generated_tokens
                self.server.metrics.tokens(model, 1)
                if rec.reasoning:
                    send(chunk({"reasoning_content": rec.reasoning}))
                events = [("content", rec.text)] if parser is None else parser.feed(rec.text)
                if rec.finish_reason and parser is not None:
                    events += parser.finish()
                for kind, value in events:
                    if kind == "content" and value:
                        send(chunk({"content": value}))
                    elif kind == "call":
                        send(chunk({"tool_calls": [openai_call(value, len(parser.calls) - 1)]}))
                    elif kind == "invalid":
                        send(chunk({"invalid_tool_calls": [value]}))
                if rec.finish_reason:
                    finish = "tool_calls" if parser is not None and parser.calls and rec.finish_reason == "stop" \
                        else rec.finish_reason
                    send(chunk({}, finish))
            if include_usage:
                send({"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                      "usage": {"prompt_tokens": n_prompt, "completion_tokens": n, "total_tokens": n_prompt + n}})
            send("[DONE]")
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            outcome = "disconnected"  # client went away: closing the generator stops generation
        except Exception as exc:  # noqa: BLE001 - the 200 is already sent: end the stream with an error event
            outcome = "failed"
            LOG.exception("stream %s failed", rid)
            try:
                send({"error": {"message": f"generation failed: {type(exc).__name__}: {exc}", "type": "server_error",
                                "param": None, "code": "internal_error"}})
                send("[DONE]")
            except OSError:
                pass
        finally:
            stream.close()
        return outcome


def _handle_stream(handle):
    """A batch-engine handle as a generator whose close() cancels the request (a client that went away)."""
    try:
        yield from handle
    finally:
        handle.close()


def make_server(root: Path, host: str = "127.0.0.1", port: int = 0, api_key: str | None = None,
                rate_limit: int | None = None, threads: int | None = None, max_body: int = 1 << 20,
                max_connections: int = 256, cors_origin: str | None = None, max_batch: int | None = None,
                allow_local_images: bool = False, provider: str | None = None) -> EdgeServer:
    cache = ModelCache(root, threads=threads, max_batch=max_batch, provider=provider)
    if any(_has_vision(m.path) for m in cache.models.values()):
        max_body = max(max_body, VISION_MAX_BODY)  # images arrive as data URIs inside the JSON body
    return EdgeServer((host, port), cache, api_key=api_key, rate_limit=rate_limit, max_body=max_body,
                      max_connections=max_connections, cors_origin=cors_origin, allow_local_images=allow_local_images)


VISION_MAX_BODY = 32 << 20  # a request body with a few base64 images


def _has_vision(path: Path) -> bool:
    try:
        return "vision" in json.loads((Path(path) / "genai_config.json").read_text())["model"]
    except (OSError, ValueError, KeyError):
        return False
