"""OpenAI- and Ollama-compatible HTTP server (Foundry Local-style management too) as a route table.

OpenAI: GET /v1/models, POST /v1/chat/completions (JSON or SSE), POST /v1/completions. Foundry Local: GET
/openai/models, /openai/loadedmodels, /openai/status, /openai/load/NAME, /openai/unload/NAME. Ollama: POST /api/chat,
/api/generate (NDJSON streams or one object), /api/show; GET /api/tags, /api/ps, /api/version. GET /health, GET
/metrics (Prometheus text; behind the key when one is set). Every request passes `guard.Guard` first; connections are
`connections.EdgeProtocol`; `server.EdgeServer` (`server.make_server`) runs it all on uvicorn.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from starlette.requests import Request

from . import management as m
from . import ollama as ol
from .context import LOG, Ctx, error_response
from .errors import ApiError
from .guard import Guard
from .openai_routes import chat_completions, completions


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # exact, or a pattern with one {name} (the rest of the path)
    handler: object
    auth: bool = True  # API key and rate limit
    ollama: bool = False  # errors in Ollama's shape: {"error": "..."}


ROUTES = (
    Route("GET", "/health", m.health, auth=False),
    Route("GET", "/v1/health", m.health, auth=False),
    Route("GET", "/metrics", m.metrics),
    Route("GET", "/v1/models", m.models),
    Route("POST", "/v1/chat/completions", chat_completions),
    Route("POST", "/v1/completions", completions),
    Route("GET", "/openai/models", m.foundry_models),
    Route("GET", "/openai/loadedmodels", m.loaded_models),
    Route("GET", "/openai/status", m.status),
    Route("GET", "/openai/load/{name}", m.load),
    Route("GET", "/openai/unload/{name}", m.unload),
    Route("POST", "/api/chat", ol.chat, ollama=True),
    Route("POST", "/api/generate", ol.generate, ollama=True),
    Route("POST", "/api/show", ol.show, ollama=True),
    Route("GET", "/api/tags", ol.tags, ollama=True),
    Route("GET", "/api/ps", ol.ps, ollama=True),
    Route("GET", "/api/version", ol.version, ollama=True),
)


class Router:
    """Method + path → route, with path parameters; a JSON 404/405 otherwise."""

    def __init__(self, routes=ROUTES):
        self.exact = {(r.method, r.path): r for r in routes if "{" not in r.path}
        self.patterns = [(r, re.compile(re.escape(r.path.split("{")[0]) + r"(?P<name>.+)")) for r in routes
                         if "{" in r.path]
        self.paths = {r.path for r in routes}

    def match(self, method: str, path: str) -> tuple[Route, dict]:
        path = path.rstrip("/") or "/"
        route = self.exact.get((method, path))
        if route is not None:
            return route, {}
        for route, rx in self.patterns:
            hit = rx.fullmatch(path)
            if hit and route.method == method:
                return route, hit.groupdict()
        known = path in self.paths or any(rx.fullmatch(path) for _, rx in self.patterns)
        if known or method not in ("GET", "POST"):
            raise ApiError(405, f"method {method} is not allowed on {path[:200]}", "invalid_request_error")
        raise ApiError(404, f"no route for {method} {path[:200]}", "invalid_request_error")


class App:
    """The ASGI application: route, authenticate, run the handler, answer errors as JSON."""

    def __init__(self, state, router: Router | None = None):
        self.state, self.router = state, router or Router()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return
        ctx = Ctx(Request(scope, receive), self.state)
        route = None
        try:
            route, ctx.params = self.router.match(scope["method"], scope["path"])
            if route.auth:
                ctx.auth()
            response = await route.handler(ctx)
        except ApiError as err:
            self.state.metrics.count_error(err.status)
            response = error_response(err, ollama=bool(route and route.ollama))
        except Exception:  # noqa: BLE001 - never drop a connection without an answer
            LOG.exception("request %s (%s %s) failed", ctx.rid, scope["method"], scope["path"])
            err = ApiError(500, f"internal server error (request id {ctx.rid}; the server log has the details)",
                           "server_error", code="internal_error")
            self.state.metrics.count_error(500)
            response = error_response(err, ollama=bool(route and route.ollama))
        await response(scope, receive, send)


def build_app(state):
    return Guard(App(state), state)
