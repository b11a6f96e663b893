"""`EdgeServer`: the ASGI app on uvicorn (h11), on a socket bound up front (so the port is known and a busy port is an
error at once), with a graceful shutdown: SIGTERM/SIGINT (or `shutdown()`) stop accepting, running generations get
`grace` seconds to finish, the rest end with an error event (SSE: then `[DONE]`) or a 503, every generation thread and
batch engine is stopped, and `serve_forever()` returns normally (exit status 0)."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from dataclasses import fields
from pathlib import Path

import uvicorn

from .app import build_app
from .connections import ConnectionBudget, protocol_class
from .models import ModelCache
from .state import ServeOptions, ServerState

LOG = logging.getLogger("edgeqwen.serve")
VISION_MAX_BODY = 32 << 20  # a request body with a few base64 images


class _Uvicorn(uvicorn.Server):
    def __init__(self, config, on_shutdown):
        super().__init__(config)
        self.on_shutdown = on_shutdown

    def handle_exit(self, sig, frame) -> None:
        """Signals end the server; they are not raised again afterwards (uvicorn's default), so the exit is 0."""
        if self.should_exit:
            self.force_exit = True
        self.should_exit = True

    async def shutdown(self, sockets=None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets=sockets)

    async def main_loop(self) -> None:
        self.edge_loop = asyncio.get_running_loop()
        await super().main_loop()


class EdgeServer:
    def __init__(self, cache: ModelCache, options: ServeOptions):
        self.cache, self.options = cache, options
        self.state = ServerState(cache, options)
        family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
        self.socket = socket.socket(family, socket.SOCK_STREAM)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.socket.bind((options.host, options.port))
            self.socket.listen(2048)
        except OSError:
            self.socket.close()
            raise
        self.server_address = self.socket.getsockname()[:2]
        self.state.url = self.url
        budget = ConnectionBudget(options.max_connections, options.max_connections_per_client,
                                  options.request_timeout, self.state.metrics)
        config = uvicorn.Config(build_app(self.state), http=protocol_class(budget), ws="none", lifespan="off",
                                log_config=None, access_log=False, server_header=False, loop="asyncio",
                                timeout_keep_alive=options.keep_alive,
                                timeout_graceful_shutdown=options.grace + 5)
        self.uvicorn = _Uvicorn(config, self._begin_drain)
        self.budget = budget
        for name in ("uvicorn", "uvicorn.error"):  # malformed requests are answered, not printed (see /metrics)
            if not logging.getLogger(name).handlers:
                logging.getLogger(name).addHandler(logging.NullHandler())
        self._stopped = threading.Event()

    @property
    def url(self) -> str:
        host, port = self.server_address
        return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

    @property
    def open_connections(self) -> dict[str, int]:
        """Open connections by client address."""
        return dict(self.budget.open)

    def _begin_drain(self) -> None:
        """Shutdown has begun: refuse new work; after the grace period, interrupt what still runs."""
        self.state.draining = True
        loop = asyncio.get_running_loop()
        loop.call_later(self.options.grace, self.state.interrupt_all)

    def serve_forever(self) -> None:
        try:
            self.uvicorn.run(sockets=[self.socket])
        finally:
            self.state.close_models()
            self._stopped.set()

    def shutdown(self, timeout: float = 60) -> None:
        """Stop (from another thread), as SIGTERM does; returns when serve_forever has."""
        self.uvicorn.should_exit = True
        self._stopped.wait(timeout)

    def server_close(self) -> None:
        self.socket.close()

    def start(self) -> "EdgeServer":
        """serve_forever in a daemon thread; returns once the server accepts connections."""
        threading.Thread(target=self.serve_forever, name="edgeqwen-serve", daemon=True).start()
        while not self.uvicorn.started and not self._stopped.wait(0.01):
            pass
        return self


def _has_vision(path: Path) -> bool:
    try:
        return "vision" in json.loads((Path(path) / "genai_config.json").read_text())["model"]
    except (OSError, ValueError, KeyError):
        return False


def make_server(root: Path, **kw) -> EdgeServer:
    names = {f.name for f in fields(ServeOptions)}
    unknown = set(kw) - names
    if unknown:
        raise TypeError(f"unknown server options: {', '.join(sorted(unknown))}")
    options = ServeOptions(**kw)
    options.allow_hosts = tuple(options.allow_hosts or ())
    cache = ModelCache(root, threads=options.threads, max_batch=options.max_batch, provider=options.provider,
                       speculate=options.speculate)
    if any(_has_vision(m.path) for m in cache.models.values()):
        options.max_body = max(options.max_body, VISION_MAX_BODY)  # images arrive as data URIs inside the JSON body
        options.max_pending_bytes = max(options.max_pending_bytes, 2 * options.max_body)
    return EdgeServer(cache, options)
