"""Health, metrics, the model list and Foundry Local's management routes (GET shapes kept for its clients; they pass
the same Host/Origin checks as everything else, and the key when one is set)."""

from __future__ import annotations

import asyncio
import time

from starlette.responses import Response

from .context import Ctx, json_response
from .errors import ApiError


async def health(ctx: Ctx) -> Response:
    return json_response({"status": "ok"})


async def metrics(ctx: Ctx) -> Response:
    state = ctx.state
    text = state.metrics.render(state.cache.loaded(), state.cache.engines(), state.cache.providers())
    return Response(text, media_type="text/plain; version=0.0.4")


async def models(ctx: Ctx) -> Response:
    return json_response({"object": "list", "data": [
        {"id": n, "object": "model", "created": m.created, "owned_by": "edgeqwen"}
        for n, m in ctx.state.cache.models.items()]})


async def foundry_models(ctx: Ctx) -> Response:
    return json_response(list(ctx.state.cache.models))


async def loaded_models(ctx: Ctx) -> Response:
    return json_response(ctx.state.cache.loaded())


async def status(ctx: Ctx) -> Response:
    state = ctx.state
    return json_response({"endpoints": [state.url], "modelDirPath": "", "loadedModels": state.cache.loaded(),
                          "uptimeSeconds": round(time.time() - state.started, 1)})


async def load(ctx: Ctx) -> Response:
    name = ctx.params["name"]
    await ctx.model(name)
    return json_response({"model": name, "loaded": True})


async def unload(ctx: Ctx) -> Response:
    name = ctx.params["name"]
    try:
        await asyncio.to_thread(ctx.state.cache.unload, name)  # waits for its running generation
    except KeyError:
        raise ApiError(404, f"model {name!r} not found", "invalid_request_error", code="model_not_found") from None
    return json_response({"model": name, "loaded": False})
