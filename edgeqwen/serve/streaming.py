"""Answering with a Generation: a streamed body (SSE or NDJSON) or one collected answer; either way a client that goes
away cancels the generation (its batch slot is free at the next step) and every request is counted once by outcome."""

from __future__ import annotations

import asyncio
import time

from starlette.responses import Response

from .context import LOG, Ctx, error_response
from .errors import ApiError
from .generation import Interrupted


async def _disconnected(receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


class Outcome:
    """How one generation ended (completed / disconnected / interrupted / failed), counted in /metrics once."""

    def __init__(self, ctx: Ctx, gen):
        self.ctx, self.gen, self.kind, self.done = ctx, gen, "completed", False

    def finish(self, kind: str | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.kind = kind or self.kind
        gen, state = self.gen, self.ctx.state
        gen.cancel()  # a no-op when it ended by itself
        state.forget(gen)
        queue_s = gen.queue_s if gen.started is not None else time.perf_counter() - gen.job.queued
        total = time.perf_counter() - gen.job.queued
        ttft = queue_s + gen.first_token_s if gen.first_token_s is not None else None
        state.metrics.observe(gen.job.model, self.kind, queue_s=queue_s, generate_s=max(0.0, total - queue_s),
                              ttft_s=ttft)

    def response(self) -> Response:
        if self.kind == "interrupted":
            return error_response(ApiError(503, "the server is shutting down; send the request again later",
                                           "server_error", code="server_shutdown"))
        return Response(status_code=499)  # nobody is listening: uvicorn drops it


async def _read_all(gen) -> list:
    return [rec async for rec in gen]


async def collect(ctx: Ctx, gen, outcome: Outcome):
    """Every record of a non-streamed answer; None when the client went away (the generation is cancelled) or the
    server's grace period ended."""
    watcher = asyncio.ensure_future(_disconnected(ctx.request.receive))
    reader = asyncio.ensure_future(_read_all(gen))
    try:
        done, _ = await asyncio.wait({reader, watcher}, return_when=asyncio.FIRST_COMPLETED)
        if reader not in done:
            outcome.finish("disconnected")
            reader.cancel()
            return None
        return reader.result()
    except Interrupted:
        outcome.finish("interrupted")
        return None
    except Exception:  # noqa: BLE001 - no answer was sent yet: a 500 with a request id, the details in the log
        outcome.finish("failed")
        LOG.exception("request %s: generation failed", ctx.rid)
        raise ApiError(500, f"generation failed (request id {ctx.rid}; the server log has the details)",
                       "server_error", code="internal_error") from None
    finally:
        watcher.cancel()
        outcome.finish()


class StreamResponse(Response):
    """A 200 whose body is `events` (async iterator of bytes). A client that goes away cancels the generation; an
    exception (the shutdown grace ending, a failed step) ends the body with `on_error(exc)`'s bytes."""

    def __init__(self, ctx: Ctx, gen, events, media_type: str, on_error):
        super().__init__(status_code=200, media_type=media_type, headers={"cache-control": "no-cache", **ctx.headers})
        self.raw_headers = [(k, v) for k, v in self.raw_headers if k != b"content-length"]  # chunked
        self.ctx, self.gen, self.events, self.on_error = ctx, gen, events, on_error

    async def __call__(self, scope, receive, send) -> None:
        outcome = Outcome(self.ctx, self.gen)
        watcher = asyncio.ensure_future(_disconnected(receive))
        watcher.add_done_callback(lambda t: t.cancelled() or self.gen.cancel())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.events:
                while self.gen.pending:  # records that arrived together leave in one write
                    chunk += await self.events.__anext__()
                if watcher.done():
                    break
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except Exception as exc:  # noqa: BLE001 - the 200 is out: end the body with an error event
            outcome.kind = "interrupted" if isinstance(exc, Interrupted) else "failed"
            if not isinstance(exc, Interrupted):
                LOG.exception("stream %s failed", self.ctx.rid)
            if not watcher.done():
                await send({"type": "http.response.body", "body": self.on_error(exc), "more_body": True})
        finally:
            if watcher.done():
                outcome.kind = "disconnected"
            else:
                watcher.cancel()
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            outcome.finish()
