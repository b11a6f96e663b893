"""From a parsed request to records on the event loop.

`prepare` (run in a worker thread: loading, templating and tokenizing take milliseconds to seconds) turns a Request into
a Job — the prompt ids, the sampling, the grammar — or raises ApiError. `Generation` runs the Job beside the event
loop: records come straight from the batch engine's thread (`put`), or, for graphs served one at a time, from a pump
thread running the runner's stream under the model's lock; a burst of records costs the loop one wake-up. `cancel()` (a client that went away) and `interrupt()` (the
shutdown grace is over) stop it at the next token and free its batch slot.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..runtime.runner import Record, RunnerError, Sampling, make_drafter
from .constraints import check_tool_schemas, constraint_for
from .errors import ApiError, bad
from .prompt import PromptTooLong, encode_chat, encode_raw
from .protocol import Request
from .tools import ToolCallParser

_END = object()


class Interrupted(Exception):
    """The server is shutting down and the grace period is over."""


@dataclass
class Job:
    model: str
    served: object
    ids: list[int]
    sampling: Sampling
    thinking_open: bool = False
    prepared: tuple | None = None  # vision: (expanded ids, (features, positions))
    parser: ToolCallParser | None = None
    sampling_header: str = ""
    handle: object = None  # the batch engine's handle once submitted (its close() cancels)
    speculate: str | None = None  # "lookup": drafts verified several tokens per step (output unchanged)
    queued: float = field(default_factory=time.perf_counter)


def _thinking(runner, req: Request) -> None:
    if (req.schema is not None or req.tool_choice not in ("none", "auto")) and runner.think_ids[0] is not None:
        if req.enable_thinking:  # a <think> block cannot be held to a grammar
            raise bad("constrained output (response_format or a forced tool_choice) cannot be combined with "
                      "enable_thinking: true", "chat_template_kwargs")
        req.enable_thinking = False


def _encode(runner, req: Request, chat: bool) -> tuple[str, list[int]]:
    param = "messages" if chat else "prompt"
    try:
        if chat:
            extra = {"tools": req.tools} if req.tools and req.tool_choice != "none" else {}
            return encode_chat(runner, req.messages, runner.context_length, req.enable_thinking, **extra)
        prompt = runner.fim_prompt(req.prompt, req.suffix) if req.suffix is not None else req.prompt
        return prompt, encode_raw(runner, prompt, runner.context_length)
    except PromptTooLong as exc:
        raise bad(str(exc), param, code="context_length_exceeded") from None
    except RunnerError as exc:  # a template that refuses the messages, text that is not valid Unicode
        raise bad(str(exc), param) from None


def _images(runner, req: Request, ids: list[int], allow_files: bool):
    from ..runtime.vision import ImageError, load_image

    images = []
    for n, url in enumerate(req.images):
        try:
            images.append(load_image(url, allow_files=allow_files))
        except ImageError as exc:
            raise bad(f"image {n + 1}: {exc}", "messages") from None
    try:
        return runner.vision.prepare(ids, images)
    except RunnerError as exc:
        raise bad(str(exc), "messages") from None


def _sampling(runner, req: Request, n_prompt: int, constraint) -> tuple[Sampling, str]:
    s = runner.default_sampling(  # what the request leaves out comes from the artifact's recipe
        max_new_tokens=min(req.max_tokens, runner.context_length - n_prompt), temperature=req.temperature,
        top_p=req.top_p, top_k=req.top_k, repetition_penalty=req.repetition_penalty, seed=req.seed,
        stop=tuple(req.stop), constraint=constraint)
    try:
        s.validate()
    except RunnerError as exc:
        raise bad(str(exc)) from None
    return s, (f"temperature={s.temperature:g}, top_p={s.top_p:g}, top_k={s.top_k}, "
               f"repetition_penalty={s.repetition_penalty:g}")


def prepare(served, req: Request, chat: bool, allow_files: bool = False) -> Job:
    """The whole request checked and tokenized; nothing generated yet."""
    runner = served.runner
    param = "messages" if chat else "prompt"
    if chat:
        _thinking(runner, req)
    if req.images and runner.vision is None:
        raise bad(f"model {req.model!r} has no vision encoder: image_url parts need a Qwen2.5-VL artifact", "messages")
    prompt, ids = _encode(runner, req, chat)
    if not ids:
        raise bad("the prompt is empty", param)
    prepared = _images(runner, req, ids, allow_files) if req.images else None
    if prepared is not None:
        ids = prepared[0]
        if len(ids) + 1 > runner.context_length:
            raise bad(f"prompt has {len(ids)} tokens; the model's context is {runner.context_length} tokens", param,
                      code="context_length_exceeded")
    elif runner.vision is not None:
        try:
            runner.vision.check_text_only(ids)
        except RunnerError as exc:
            raise bad(str(exc), param) from None
    if chat and req.tool_choice == "auto":
        check_tool_schemas(runner, req.tools)
    sampling, header = _sampling(runner, req, len(ids), constraint_for(runner, req) if chat else None)
    parser = ToolCallParser({t["function"]["name"] for t in req.tools}) if (
        chat and req.tools and req.tool_choice != "none") else None
    job = Job(req.model, served, ids, sampling, chat and prompt.rstrip().endswith("<think>"),
              prepared and prepared[1], parser, header)
    spec = req.speculate if req.speculate is not None else served.speculate
    job.speculate = None if spec == "none" else spec
    return job


def submit(job: Job, sink, owner: str | None = None) -> None:
    """Continuous batching: the job joins the engine now (a refusal is still an HTTP error); `sink` gets its records
    straight from the engine's thread."""
    try:
        job.handle = job.served.engine.submit(job.ids, job.sampling, thinking_open=job.thinking_open,
                                              prepared=job.prepared, sink=sink, owner=owner,
                                              speculate=job.speculate)
    except RunnerError as exc:
        raise ApiError(503 if "unloaded" in str(exc) else 400, str(exc), "invalid_request_error") from None


class Generation:
    """A Job running beside the loop; iterate it (async) for Records."""

    def __init__(self, job: Job, loop: asyncio.AbstractEventLoop, reload=None, on_record=None, owner=None):
        self.job, self.loop, self.reload, self.on_record = job, loop, reload, on_record
        self.items: deque = deque()  # records (and the end, or an error) handed over by the pump thread
        self.ready = asyncio.Event()
        self._wake_pending = False  # one loop wake-up at a time: records that arrive meanwhile ride along
        self._lock = threading.Lock()
        self.cancelled = threading.Event()
        self.started: float | None = None  # when it reached the model (batch slot or lock)
        self.first_token_s: float | None = None
        if job.served.engine is not None:
            submit(job, self, owner)  # the engine calls put() from its thread
        else:
            threading.Thread(target=self._pump, name="edgeqwen-request", daemon=True).start()

    # ---- worker side ------------------------------------------------------------------------------
    def put(self, item) -> None:
        """The batch engine's side: a Record, an exception, or its end marker (anything else)."""
        if self.started is None:
            self.started = self.job.queued + self.job.handle.queue_s if self.job.handle else time.perf_counter()
        self._push(item if isinstance(item, (Record, BaseException)) else _END)

    def _push(self, item) -> None:
        with self._lock:
            self.items.append(item)
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            self.loop.call_soon_threadsafe(self._wake)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            self.cancelled.set()

    def _wake(self) -> None:
        with self._lock:
            self._wake_pending = False
        self.ready.set()

    def _pump(self) -> None:
        try:
            self._pump_locked()
        except Exception as exc:  # noqa: BLE001 - the loop side turns it into an error response or event
            self._push(exc)
        finally:
            self._push(_END)

    def _pump_locked(self) -> None:
        served = self.job.served
        while not served.lock.acquire(timeout=0.05):
            if self.cancelled.is_set():
                return
        try:
            self.started = time.perf_counter()
            runner = served.runner
            if runner is None and self.reload is not None:  # unloaded while it queued: load again
                runner = self.reload().runner
            drafter = make_drafter(self.job.speculate) if self.job.speculate else None
            if drafter is not None and runner.static_slots is not None:
                drafter = None  # static NPU shapes verify one token per step: nothing to gain, output the same
            gen = runner.stream(self.job.ids, self.job.sampling, thinking_open=self.job.thinking_open,
                                prepared=self.job.prepared, speculate=drafter)
            try:
                for rec in gen:
                    if self.cancelled.is_set():
                        return
                    self._push(rec)
            finally:
                gen.close()
        finally:
            served.lock.release()

    # ---- loop side --------------------------------------------------------------------------------
    def cancel(self) -> None:
        self.cancelled.set()
        if self.job.handle is not None:
            self.job.handle.close()

    def interrupt(self) -> None:
        self.cancel()
        with self._lock:
            self.items.appendleft(Interrupted("the server is shutting down"))
        self.ready.set()

    @property
    def pending(self) -> int:
        """Records already handed over and not yet read (read them without waiting)."""
        n = len(self.items)
        return n - 1 if n and self.items[-1] is _END else n

    def __aiter__(self):
        return self

    async def __anext__(self):
        while not self.items:
            self.ready.clear()
            if not self.items:
                await self.ready.wait()
        item = self.items[0]
        if item is _END:  # left in place: later reads end too
            raise StopAsyncIteration
        self.items.popleft()
        if isinstance(item, BaseException):
            raise item
        if self.first_token_s is None:
            self.first_token_s = item.ttft_s
        if self.on_record is not None:
            self.on_record(item)
        return item

    @property
    def queue_s(self) -> float:
        return (self.started or time.perf_counter()) - self.job.queued
