"""What the whole server shares: its options, the model cache, metrics, limits, and the generations running now."""

from __future__ import annotations

import asyncio
import threading
import time
from dataclasses import dataclass

from .errors import ApiError
from .generation import Generation, prepare
from .limits import RateLimiter
from .metrics import Metrics

QUICK_BODY = 4096  # bytes: a request body this small is prepared without a worker thread


@dataclass
class ServeOptions:
    host: str = "127.0.0.1"
    port: int = 0
    api_key: str | None = None
    rate_limit: int | None = None
    max_body: int = 1 << 20
    max_connections: int = 1024  # open connections overall (asyncio: an idle one costs a few kB, no thread)
    max_connections_per_client: int = 128  # open connections from one address
    request_timeout: float = 30.0  # seconds for a whole request (line, headers, body) to arrive
    keep_alive: float = 5.0  # seconds an idle keep-alive connection stays open
    grace: float = 10.0  # seconds running generations may finish after SIGTERM/SIGINT
    max_pending_bytes: int = 64 << 20  # request bodies being read and parsed at once
    prepare_concurrency: int = 2  # prompts templated and tokenized at once (each in a worker thread)
    cors_origin: str | None = None
    allow_hosts: tuple[str, ...] = ()
    allow_local_images: bool = False
    threads: int | None = None
    max_batch: int | None = None
    provider: str | None = None  # every model's execution provider (None: each artifact's own, CPU its fallback)
    speculate: str | None = None  # "lookup": requests that do not say otherwise decode speculatively


class ServerState:
    def __init__(self, cache, options: ServeOptions):
        self.cache, self.options = cache, options
        self.api_key = options.api_key
        self.max_body = options.max_body
        self.limiter = RateLimiter(options.rate_limit)
        self.metrics = Metrics()
        self.started = time.time()
        self.url = ""
        self.pending_bytes = 0
        self.draining = False
        self.live: set[Generation] = set()
        self._gate: asyncio.Semaphore | None = None

    async def start(self, ctx, req, chat: bool) -> Generation:
        """Load, check and tokenize the request (bounded concurrency, worker threads), then start generating."""
        if self.draining:
            raise ApiError(503, "the server is shutting down", "server_error", code="server_shutdown")
        served = await ctx.model(req.model)
        if self._quick(ctx, req):  # a small plain prompt: templated and tokenized in well under a millisecond
            job = prepare(served, req, chat, self.options.allow_local_images)
        else:
            if self._gate is None:
                self._gate = asyncio.Semaphore(self.options.prepare_concurrency)
            async with self._gate:
                job = await asyncio.to_thread(prepare, served, req, chat, self.options.allow_local_images)
        if req.ignored:  # request fields that changed nothing (see protocol.UNSUPPORTED for what is refused)
            ctx.headers["x-edgeqwen-ignored"] = ", ".join(req.ignored)[:1000]
        ctx.headers["x-edgeqwen-sampling"] = job.sampling_header
        model = req.model
        gen = Generation(job, asyncio.get_running_loop(), reload=lambda: self.cache.load(model),
                         on_record=lambda rec: self.metrics.tokens(model, 1), owner=ctx.client)
        self.live.add(gen)
        return gen

    @staticmethod
    def _quick(ctx, req) -> bool:
        """Prepared on the event loop: a short body, no grammar to compile, no image to decode."""
        small = int(ctx.request.headers.get("content-length") or 0) <= QUICK_BODY
        return small and req.schema is None and not req.tools and not req.images

    def forget(self, gen: Generation) -> None:
        self.live.discard(gen)

    def interrupt_all(self) -> None:
        for gen in list(self.live):
            gen.interrupt()

    def close_models(self) -> None:
        """After the last response: stop every generation thread and batch engine (an onnxruntime run left going at
        interpreter exit aborts the process)."""
        for gen in list(self.live):
            gen.cancel()
        for thread in threading.enumerate():
            if thread.name == "edgeqwen-request":
                thread.join(timeout=30)
        for name in self.cache.loaded():
            self.cache.unload(name)
