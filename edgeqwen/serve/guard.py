"""The checks every request passes before any route sees it (an ASGI middleware):

- Host allowlist: loopback names, IP literals and the bound address, plus `--allow-host` names (`*`: any). A page on
  another site that rebinds its own name to 127.0.0.1 (DNS rebinding) sends its own name as Host, and is refused.
- Browsers: a request whose `Origin` is not this server's own (or the `--cors` origin), or that the browser marks as
  cross-site (`Sec-Fetch-Site`, sent with image and form requests too, which carry no Origin), is refused: a page the
  user visits cannot drive the server, including the Foundry-style management GETs.
- Framing: a GET/HEAD/OPTIONS with a body, or any Transfer-Encoding, is refused and the connection closed (the parser
  already refuses conflicting Content-Lengths); a declared body over the limit is a 413 before a byte is read.
- Memory: the bodies being read and parsed at once are held to a byte budget (503 beyond, before reading).
"""

from __future__ import annotations

import ipaddress
import json

from .errors import ApiError

LOOPBACK_NAMES = {"localhost", "localhost.", "127.0.0.1", "::1"}
NO_BODY = {"GET", "HEAD", "OPTIONS"}


def host_name(value: str) -> str:
    """`name:port`, `[v6]:port`, `name` → the name, lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1:value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
        return True
    except ValueError:
        return False


class Guard:
    def __init__(self, app, state):
        self.app, self.state = app, state
        opts = state.options
        self.any_host = "*" in opts.allow_hosts
        self.hosts = LOOPBACK_NAMES | {opts.host.lower()} | {h.lower() for h in opts.allow_hosts}
        self.cors = opts.cors_origin

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope["headers"]:
            headers.setdefault(k.decode("latin-1"), v.decode("latin-1"))
        try:
            self._check(scope, headers)
            if scope["method"] == "OPTIONS":
                return await self._preflight(headers, send)
            reserved = self._reserve(headers)
        except ApiError as err:
            self.state.metrics.count_error(err.status)
            return await _send_error(send, err, self._cors_headers(headers))
        extra = self._cors_headers(headers)

        async def send_with_cors(message):
            if message["type"] == "http.response.start" and extra:
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_cors if extra else send)
        finally:
            self.state.pending_bytes -= reserved

    def _check(self, scope, headers: dict) -> None:
        if scope.get("http_version") not in ("1.0", "1.1"):
            raise ApiError(505, f"HTTP/{scope.get('http_version')} is not supported: send HTTP/1.1",
                           "invalid_request_error", code="http_version_not_supported")
        host = headers.get("host")
        if host is not None and not self.any_host:
            name = host_name(host)
            if name not in self.hosts and not _is_ip(name):
                raise ApiError(403, f"Host {host[:80]!r} is not served here (DNS rebinding protection); start the "
                               "server with --allow-host NAME to serve that name", "invalid_request_error",
                               code="host_not_allowed")
        origin, site = headers.get("origin"), headers.get("sec-fetch-site")
        if not self._origin_ok(origin, host) or (site in ("cross-site", "same-site") and not self._cors_ok(origin)):
            raise ApiError(403, f"cross-site requests are refused (Origin {str(origin)[:80]!r}); a browser page needs "
                           "the server started with --cors ORIGIN", "invalid_request_error", code="origin_not_allowed")
        method = scope["method"]
        length = headers.get("content-length")
        if method in NO_BODY and ((length not in (None, "0")) or "transfer-encoding" in headers):
            raise ApiError(400, f"a {method} request cannot carry a body", "invalid_request_error")
        if "transfer-encoding" in headers:
            raise ApiError(411, "chunked request bodies are not accepted: send the body with a Content-Length",
                           "invalid_request_error")
        if length is not None and int(length) > self.state.max_body:
            raise ApiError(413, f"request body of {length} bytes exceeds the limit of {self.state.max_body}",
                           "invalid_request_error")
        if self.state.draining and scope["path"].rstrip("/") not in ("/health", "/v1/health"):
            raise ApiError(503, "the server is shutting down", "server_error", code="server_shutdown")

    def _cors_ok(self, origin) -> bool:
        return bool(self.cors) and (self.cors == "*" or origin == self.cors)

    def _origin_ok(self, origin, host) -> bool:
        if origin is None or self._cors_ok(origin):
            return True
        return host is not None and origin.lower() in (f"http://{host.lower()}", f"https://{host.lower()}")

    def _reserve(self, headers: dict) -> int:
        length = int(headers.get("content-length") or 0)
        if length and self.state.pending_bytes + length > self.state.options.max_pending_bytes:
            raise ApiError(503, "server busy: too many request bodies are being read at once; retry shortly",
                           "server_error", code="server_busy", headers={"Retry-After": "1"})
        self.state.pending_bytes += length
        return length

    def _cors_headers(self, headers: dict) -> list:
        origin = headers.get("origin")
        if origin and self._cors_ok(origin):
            return [(b"access-control-allow-origin", (self.cors if self.cors == "*" else origin).encode("latin-1")),
                    (b"vary", b"Origin")]
        return []

    async def _preflight(self, headers: dict, send) -> None:
        if not self.cors:
            err = ApiError(405, "OPTIONS is only answered with --cors", "invalid_request_error")
            self.state.metrics.count_error(405)
            return await _send_error(send, err, [])
        await send({"type": "http.response.start", "status": 204, "headers": [
            *self._cors_headers(headers), (b"access-control-allow-methods", b"GET, POST, OPTIONS"),
            (b"access-control-allow-headers", b"Authorization, Content-Type"), (b"access-control-max-age", b"600"),
            (b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def _send_error(send, err: ApiError, extra: list) -> None:
    body = json.dumps(err.payload()).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"connection", b"close"), *[(k.lower().encode(), str(v).encode()) for k, v in err.headers.items()],
               *extra]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
