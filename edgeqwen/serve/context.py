"""Per-request context: what a handler needs (the server state, the request, its id) and what it tells the response
(ignored fields, the sampling that ran). Handlers are `async def handler(ctx) -> Response`."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import uuid
from dataclasses import dataclass, field

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from ..errors import EdgeQwenError
from ..runtime.runner import RunnerError
from .errors import ApiError, bad

LOG = logging.getLogger("edgeqwen.serve")


def json_response(payload, status: int = 200, headers: dict | None = None, close: bool = False) -> Response:
    body = json.dumps(payload, ensure_ascii=False).encode()
    out = {"content-type": "application/json", **(headers or {})}
    if close:
        out["connection"] = "close"
    return Response(body, status_code=status, headers=out)


def error_response(err: ApiError, ollama: bool = False) -> Response:
    """Errors close the connection: a request refused before its body was read leaves nothing for the next one."""
    payload = {"error": err.message} if ollama else err.payload()
    return json_response(payload, err.status, headers=err.headers, close=True)


@dataclass
class Ctx:
    request: Request
    state: "object"  # server.ServerState
    rid: str = field(default_factory=lambda: uuid.uuid4().hex[:24])
    headers: dict = field(default_factory=dict)  # extra response headers (X-Edgeqwen-Ignored, -Sampling)
    params: dict = field(default_factory=dict)  # path parameters of the route

    @property
    def client(self) -> str:
        return self.request.client.host if self.request.client else "?"

    def auth(self) -> None:
        """A valid key is its own rate-limit bucket; anything else (no key configured, a wrong or missing key) is
        limited by client address, so failed attempts count and invented keys buy nothing."""
        key = self.state.api_key
        header = self.request.headers.get("authorization", "")
        given = header[7:].strip() if header.lower().startswith("bearer ") else ""
        valid = bool(key) and hmac.compare_digest(given.encode("utf-8", "replace"), key.encode())
        limiter = self.state.limiter
        wait = limiter.retry_after(f"key:{given}" if valid else f"addr:{self.client}")
        if wait is not None:
            raise ApiError(429, f"rate limit of {limiter.per_minute} requests per minute exceeded; retry in {wait} s",
                           "rate_limit_error", code="rate_limit_exceeded", headers={"Retry-After": str(wait)})
        if key and not valid:
            raise ApiError(401, "missing or invalid API key: send 'Authorization: Bearer <key>'",
                           "invalid_request_error", code="invalid_api_key")

    async def body(self) -> dict:
        try:
            raw = await self.request.body()
        except ClientDisconnect:
            raise ApiError(400, "the client went away while sending its body", "invalid_request_error") from None
        if len(raw) > self.state.max_body:  # the Content-Length was checked before; this is the bytes that came
            raise ApiError(413, f"request body exceeds the limit of {self.state.max_body} bytes", "invalid_request_error")
        try:
            data = json.loads(raw or b"null")
        except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, a 5000-digit number, 100 000 nested [
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
            raise bad(f"request body is not valid JSON: {reason}") from None
        if not isinstance(data, dict):
            raise bad("request body must be a JSON object")
        return data

    async def model(self, name):
        """The named model, loaded (in a worker thread: a first load takes seconds)."""
        cache = self.state.cache
        if not isinstance(name, str) or not name:
            raise bad("'model' is required (GET /v1/models lists them)", "model")
        try:
            cache.get(name)
        except KeyError:
            raise ApiError(404, f"model {name!r} not found; available: {', '.join(cache.models)}",
                           "invalid_request_error", param="model", code="model_not_found") from None
        served = cache.get(name)
        if served.runner is not None:  # loaded: no worker thread needed
            return served
        try:
            return await asyncio.to_thread(cache.load, name)
        except (RunnerError, EdgeQwenError) as exc:  # an artifact broken or gone: its reason, no traceback
            LOG.error("request %s: model %r failed to load: %s; run `edgeqwen verify %s`", self.rid, name,
                      _one_line(exc), served.path)
        except Exception:  # noqa: BLE001 - anything else is a bug: the traceback goes to the log
            LOG.exception("request %s: model %r failed to load", self.rid, name)
        raise ApiError(500, f"model {name!r} is listed but failed to load (request id {self.rid}; the server log "
                       "has the details)", "server_error", code="model_load_failed")


def _one_line(exc: Exception) -> str:
    """An expected error's message for one log line (EdgeQwenError spreads what/where/fix over lines)."""
    return "; ".join(line.strip() for line in str(exc).splitlines() if line.strip())
