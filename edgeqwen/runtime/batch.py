"""Continuous batching over one artifact: several sequences advance in each decode step.

On a CPU, decoding is bound by reading the weights; one forward pass over B sequences reads them once, so the
aggregate decode rate grows with B until the arithmetic catches up. The builder's graphs make this possible without
any change: GroupQueryAttention takes a batch whose rows have different lengths (right-padded: each row's past KV
sits at positions [0, len) of its slot in the shared buffer, its length comes from its attention-mask row) and writes
each row's new KV at that row's own position.

The engine owns the session: one worker thread runs the loop —
  1. admit queued requests while slots are free (slot = one row of every layer's KV buffer);
  2. prefill the oldest admitted request by one chunk (`prefill_chunk` tokens: a long prompt never stalls the
     running sequences for its whole length);
  3. one decode step for every running sequence, each sampled with its own settings (`runner.Decoding`: seeds,
     top-p, stop strings, constraints, Qwen3 thinking), records pushed to each request's queue;
  4. finished or cancelled sequences free their slot at once (the last running slot moves into the hole).
The KV buffers are sized to the admitted requests (prompt + max tokens, rounded up to 256, at most the context) and
grow in place. Graphs without an in-place KV cache (portable, static NPU shapes) are served one request at a time.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from .runner import (KV_BLOCK, Decoding, DraftCost, Drafter, DraftModel, PromptLookup, Record, Runner, RunnerError,
                     Sampling, SpeculationStats, verify_draft)

_DONE = object()


@dataclass
class _Seq:
    prompt: list[int]
    sampling: Sampling
    thinking_open: bool
    budget: int
    out: queue.Queue = field(default_factory=queue.Queue)
    submitted: float = field(default_factory=time.perf_counter)
    started: float | None = None  # first prefill chunk
    fed: int = 0  # prompt tokens already in the KV slot
    pos: int = 0  # tokens in the KV slot
    decoding: Decoding | None = None
    last: int = 0  # the token the next decode step feeds
    cancelled: bool = False
    # vision artifacts: the prompt's image features and [3, S] M-RoPE positions (None: text), the next text position
    features: np.ndarray | None = None
    positions: np.ndarray | None = None
    rope_pos: int = 0
    fed_features: int = 0  # image feature rows already fed with the prompt
    owner: str | None = None  # who asked (the server: the client's address); admission is fair between owners
    drafter: Drafter | None = None  # speculative decoding by prompt lookup (this request asked for it)
    k: int = 0  # its draft length, adapted to its acceptance
    full_head: bool = False  # a shortlist graph: this request needs the full head's logits (Runner.full_head_for)
    lazy_full: bool = False  # ... at the constrained steps the shortlist cannot decide (Runner.lazy_full_head)


class Handle:
    """What `submit` returns: iterate it for the request's Records; `close()` cancels (a client went away)."""

    def __init__(self, seq: _Seq, engine: "BatchEngine"):
        self._seq, self._engine = seq, engine

    def __iter__(self):
        while True:
            item = self._seq.out.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    @property
    def speculation(self) -> SpeculationStats | None:
        """The request's speculative decoding counts (None when it did not speculate)."""
        return self._seq.drafter.stats if self._seq.drafter is not None else None

    @property
    def queue_s(self) -> float:
        """Seconds from submission to its first prefill chunk (time spent waiting for a slot)."""
        return (self._seq.started or time.perf_counter()) - self._seq.submitted

    def close(self) -> None:
        self._seq.cancelled = True
        self._engine._wake.set()


class BatchEngine:
    def __init__(self, runner: Runner, max_batch: int = 4, prefill_chunk: int = 256):
        if runner.growing_kv or runner.static_slots is not None:
            raise RunnerError("continuous batching needs an in-place KV cache (builder graphs); this artifact's graph "
                              "grows its KV or has static shapes: serve it one request at a time")
        if max_batch < 1 or prefill_chunk < 1:
            raise RunnerError(f"max_batch and prefill_chunk must be >= 1 (got {max_batch}, {prefill_chunk})")
        self.runner, self.max_batch, self.prefill_chunk = runner, max_batch, prefill_chunk
        self.capacity = 0
        self.kv: list[tuple[np.ndarray, np.ndarray]] = []
        self.running: list[_Seq] = []  # slot i holds running[i]
        self.prefilling: _Seq | None = None  # its slot is len(running)
        self.waiting: list[_Seq] = []
        self._last_owner = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = False
        self.steps = 0
        self.hidden: np.ndarray | None = None  # a shortlist graph: the last forward pass's hidden states
        self.batch_tokens = 0  # sequences advanced, summed over decode steps (mean batch = batch_tokens / steps)
        self.drafted = self.accepted = 0  # speculative decoding's draft tokens, proposed and accepted, all requests
        self._thread = threading.Thread(target=self._loop, name="edgeqwen-batch", daemon=True)
        self._thread.start()

    # ---- requests ------------------------------------------------------------------------------
    def submit(self, prompt_ids: list[int], sampling: Sampling, thinking_open: bool = False,
               prepared=None, sink=None, owner: str | None = None, speculate=None) -> Handle:
        """`prepared` (vision artifacts): `VisionPath.prepare`'s (features, positions) for an expanded prompt. `sink`:
        an object whose `put(item)` receives the request's Records, an exception if it fails, then one end marker (any
        other object), called from the engine's thread — instead of iterating the handle (the server's event loop).
        `owner`: a free slot goes to the waiting request whose owner has the fewest running (first come among equals),
        so one client's many requests cannot keep another's waiting behind all of them. `speculate`: "lookup" drafts
        this request's next tokens from its own prompt and output, verified in the batch's step (output unchanged);
        a Drafter without a model of its own may be passed instead."""
        budget = self.runner.check_prompt(prompt_ids, sampling)
        drafter = None
        if speculate is not None:
            if isinstance(speculate, Drafter) and not isinstance(speculate, DraftModel):
                drafter = speculate  # a drafter without a model of its own (tests pass known continuations)
            elif speculate != "lookup":
                raise RunnerError(f"speculate={speculate!r}: the batch engine drafts by prompt lookup only (`lookup`); "
                                  "a draft model runs one request at a time (`edgeqwen run --speculate draft=...`)")
            else:
                drafter = PromptLookup()
            drafter.stats, drafter.cost = SpeculationStats(), DraftCost()
        if self.runner.vision is not None and prepared is None:
            self.runner.vision.check_text_only(prompt_ids)
        seq = _Seq(list(prompt_ids), sampling, thinking_open, budget, owner=owner, drafter=drafter,
                   k=drafter.first_k if drafter else 0, full_head=self.runner.full_head_for(sampling),
                   lazy_full=self.runner.lazy_full_head(sampling))
        if sink is not None:
            seq.out = sink
        if prepared is not None:
            seq.features, seq.positions = prepared
        with self._lock:
            if self._stop:
                raise RunnerError("this model is being unloaded; send the request again to load it anew")
            self.waiting.append(seq)
        self._wake.set()
        return Handle(seq, self)

    def close(self, timeout: float = 300) -> None:
        """Stop taking requests; the ones admitted or waiting are finished first (then the worker ends)."""
        with self._lock:
            self._stop = True
        self._wake.set()
        self._thread.join(timeout=timeout)

    @property
    def active(self) -> int:
        return len(self.running) + (self.prefilling is not None)

    @property
    def queued(self) -> int:
        return len(self.waiting)

    # ---- the loop ------------------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            self._drop_cancelled()
            self._admit()
            if self.prefilling is None and not self.running:
                if self._stop and not self.waiting:
                    return
                self._wake.wait(0.5)
                self._wake.clear()
                continue
            try:
                if self.prefilling is not None:
                    self._prefill_chunk()
                if self.running:
                    self._decode_step()
            except Exception as exc:  # noqa: BLE001 - every waiting client gets the error, the engine goes on
                for seq in self.running + ([self.prefilling] if self.prefilling else []):
                    seq.out.put(RunnerError(f"generation failed: {type(exc).__name__}: {exc}"))
                    seq.out.put(_DONE)
                self.running, self.prefilling = [], None

    def _admit(self) -> None:
        if self.prefilling is not None or len(self.running) >= self.max_batch:
            return
        with self._lock:
            if not self.waiting:
                return
            seq = self._next_waiting()
            self.waiting.remove(seq)
            self._last_owner = seq.owner
        self._reserve(len(seq.prompt) + seq.budget)  # the running ones are already within the capacity
        seq.started = time.perf_counter()
        self.prefilling = seq

    def _next_waiting(self) -> _Seq:
        """Round robin between owners: fewest running plus waiting ahead of it from the same owner, then not the owner
        admitted last, then first come."""
        load: dict = {}
        for r in self.running:
            load[r.owner] = load.get(r.owner, 0) + 1
        best, best_key = None, None
        for w in self.waiting:
            key = (load.get(w.owner, 0), w.owner == self._last_owner)
            load[w.owner] = load.get(w.owner, 0) + 1  # the owner's next waiting request ranks behind this one
            if best_key is None or key < best_key:
                best, best_key = w, key
        return best

    def _drop_cancelled(self) -> None:
        with self._lock:
            for seq in [s for s in self.waiting if s.cancelled]:
                self.waiting.remove(seq)
                seq.out.put(_DONE)
        if self.prefilling is not None and self.prefilling.cancelled:
            self.prefilling.out.put(_DONE)
            self.prefilling = None
        for seq in [s for s in self.running if s.cancelled]:
            self._free(seq)
            seq.out.put(_DONE)

    def _reserve(self, tokens: int) -> None:
        """KV buffers of at least `tokens` positions per slot (rounded up, at most the context), grown keeping what
        every slot holds."""
        if tokens <= self.capacity:
            return
        r = self.runner
        want = min(r.context_length, max(-(-tokens // KV_BLOCK) * KV_BLOCK, 2 * self.capacity))
        shape = (self.max_batch, r.kv_heads, want, r.head_size)
        new = []
        for i in range(r.num_layers):
            pair = []
            for j in range(2):
                buf = np.zeros(shape, r.kv_dtype)
                if self.kv:
                    buf[:, :, :self.capacity] = self.kv[i][j]
                pair.append(buf)
            new.append(tuple(pair))
        self.kv, self.capacity = new, want

    def _run(self, rows: slice, ids: np.ndarray, mask: np.ndarray, positions: np.ndarray,
             features: np.ndarray | None = None, every: bool = False, full: list[bool] = ()) -> np.ndarray:
        """One forward pass over KV slots `rows` (in place): logits of each row's last fed token ([B, V]), or with
        `every` of every fed position ([B, S, V]: speculative verify steps). Vision artifacts take embeddings (with
        `features` merged at the image placeholders) and [3, B, S] positions. `full`: per row, whether it takes the
        full head's logits (a shortlist graph's untruncated sampling or kept logits; Runner.full_head_for). With a
        shortlist the step's hidden states stay in `self.hidden` (constrained rows score from them: `_full_rows`)."""
        import onnxruntime as ort

        r = self.runner
        full_rows = [i for i, f in enumerate(full) if f] if r.shortlist_k else []
        io = r.session.io_binding()
        r.bind_inputs(io, ids, mask, positions, features)
        name = r._logits_output(every and ids.shape[1] > 1)
        io.bind_output(name, "cpu")
        if r.shortlist_k and name != "hidden_states":  # second: full-head rows read it, constrained rows may (`full`)
            io.bind_output("hidden_states", "cpu")
        for i, (k, v) in enumerate(self.kv):
            kv = ort.OrtValue.ortvalue_from_numpy(k[rows]), ort.OrtValue.ortvalue_from_numpy(v[rows])
            io.bind_ortvalue_input(f"past_key_values.{i}.key", kv[0])
            io.bind_ortvalue_input(f"past_key_values.{i}.value", kv[1])
            io.bind_ortvalue_output(f"present.{i}.key", kv[0])
            io.bind_ortvalue_output(f"present.{i}.value", kv[1])
        r.session.run_with_iobinding(io)
        outs = io.get_outputs()
        out = outs[0].numpy()
        if r.shortlist_k or name == "hidden_states":
            hidden = self.hidden = out if name == "hidden_states" else outs[1].numpy()
            if name != "hidden_states":
                hidden = hidden[:, -1:]  # pruned logits: the last position
        if name == "hidden_states" or full_rows:
            if name == "hidden_states":  # a pruned head: every position scored by a head file (the decode head's)
                part = [i for i in range(hidden.shape[0]) if i not in full_rows]
                out = np.empty((*hidden.shape[:2], r.vocab_size), np.float32)
                if part:
                    out[part] = r._head(hidden[part])
            if full_rows:
                out[full_rows] = r._head(hidden[full_rows], full=True)
        return out if every else out[:, -1]

    def _prefill_chunk(self) -> None:
        seq = self.prefilling
        slot = len(self.running)
        chunk = seq.prompt[seq.fed:seq.fed + self.prefill_chunk]
        n = len(chunk)
        positions = np.arange(seq.pos, seq.pos + n, dtype=np.int64)[None]
        features = None
        if self.runner.vision is not None:  # M-RoPE: the prompt's own positions, or text ones
            if seq.positions is not None:
                positions = seq.positions[:, None, seq.fed:seq.fed + n]
            else:
                positions = self.runner.vision.text_positions(seq.rope_pos, n)[:, None]
            seq.rope_pos = int(positions.max()) + 1
            if seq.features is not None:  # the image feature rows whose placeholders fall in this chunk
                pad = self.runner.vision.config.image_token_id
                take = sum(1 for t in chunk if t == pad)
                features = seq.features[seq.fed_features:seq.fed_features + take]
                seq.fed_features += take
        logits = self._run(slice(slot, slot + 1), np.asarray([chunk], dtype=np.int64),
                           np.ones((1, seq.pos + n), dtype=np.int64), positions, features, full=[seq.full_head])[0]
        seq.fed += n
        seq.pos += n
        if seq.fed < len(seq.prompt):
            return
        self.prefilling = None
        seq.decoding = Decoding(self.runner, seq.prompt, seq.sampling, seq.budget, seq.thinking_open,
                                ttft=time.perf_counter() - seq.started)
        self.running.append(seq)
        full = self._full_rows(0) if seq.lazy_full else None
        self._emit(seq, logits, (lambda allowed: full(-1, allowed)) if full else None)

    def _full_rows(self, b: int):
        """Row b's scored row at a fed position i, for the allowed tokens or all (a shortlist graph's constrained
        sequence; Decoding.next, Runner.full_row)."""
        hidden = self.hidden

        def full(i: int = -1, allowed=None) -> np.ndarray:
            return self.runner.full_row(i, allowed, hidden[b:b + 1])
        return full

    def _decode_step(self) -> None:
        n = len(self.running)
        t0 = time.perf_counter()
        drafts = self._drafts()
        t1 = time.perf_counter()
        width_new = 1 + max(map(len, drafts))
        positions = np.array([[s.pos] for s in self.running], dtype=np.int64) + np.arange(width_new)[None]
        width = int(positions.max()) + 1
        mask = (np.arange(width)[None, :] <= positions[:, -1:]).astype(np.int64)  # row b: its pos_b + S positions
        ids = np.array([[s.last, *d] for s, d in zip(self.running, drafts)], dtype=np.int64)  # one row, or no drafts
        full = [s.full_head for s in self.running]
        if self.runner.vision is not None:  # each row's next text position on all three M-RoPE axes
            rope = np.array([[s.rope_pos] for s in self.running], dtype=np.int64) + np.arange(width_new)[None]
            logits = self._run(slice(0, n), ids, mask, np.broadcast_to(rope[None], (3, n, width_new)), every=True,
                               full=full)
        else:
            logits = self._run(slice(0, n), ids, mask, positions, every=True, full=full)
        times = (t1 - t0, time.perf_counter() - t1) if n == 1 else None  # a lone sequence's draft and verify costs
        self.steps += 1
        self.batch_tokens += n
        # each row's kept tokens first (every row's KV is written: positions count before any slot moves)
        results = [self._verify(seq, rows, d, self._full_rows(b) if seq.lazy_full else None, times)
                   for b, (seq, rows, d) in enumerate(zip(list(self.running), logits, drafts))]
        for seq, (records, error) in zip(list(self.running), results):
            for rec in records:
                seq.out.put(rec)
            if error is not None:
                seq.out.put(error)
            if error is not None or (records and records[-1].finish_reason is not None):
                self._free(seq)
                seq.out.put(_DONE)

    def _drafts(self) -> list[list[int]]:
        """Each running sequence's draft (empty where it does not speculate), cut so its positions fit its KV slot
        and its budget. Only a sequence running alone drafts: onnxruntime's GroupQueryAttention takes several new
        tokens over a past cache at batch 1 only — and a batch already shares each weight read between its rows,
        which is what a verify step buys a lone sequence."""
        if len(self.running) > 1:
            return [[] for _ in self.running]
        seq = self.running[0]
        d = seq.drafter
        if d is None:
            return [[]]
        return [d.draft(seq.decoding.history, seq.k, min(seq.budget - len(seq.decoding.generated) - 1,
                                                         self.capacity - seq.pos - 1))]

    def _verify(self, seq: _Seq, rows: np.ndarray, draft: list[int], full=None,
                times: tuple[float, float] | None = None) -> tuple[list[Record], RunnerError | None]:
        """Row i picks the token after position i as plain decoding would; the draft is kept while it agrees (see
        Runner._speculative). Returns the records to stream; the sequence's position and next token advance. `times`:
        the step's drafting and forward seconds, where the sequence ran alone (its draft cost, `DraftCost`)."""
        records = []
        try:
            for seq.last, rec in verify_draft(seq.decoding, rows, draft, full):
                records.append(rec)
        except RunnerError as exc:
            return records, exc
        finally:
            kept = max(len(records) - 1, 0)  # every emitted token but the last was a kept draft token
            seq.pos += 1 + kept
            seq.rope_pos += 1 + kept
        d = seq.drafter
        if d is not None:
            d.stats.count(len(draft), len(records))
            if times is not None:
                d.cost.record(len(draft), kept, *times)
            self.drafted += len(draft)
            self.accepted += kept
            seq.k = d.next_k(seq.k, len(draft), kept)
        return records, None

    def _emit(self, seq: _Seq, logits: np.ndarray, full=None) -> None:
        """Sample this sequence's next token from its logits; stream the record; free the slot when it is done."""
        try:
            tok, rec = seq.decoding.next(logits, full)
        except RunnerError as exc:
            seq.out.put(exc)
            rec = None
        if rec is not None:
            seq.out.put(rec)
            seq.last = tok
        if rec is None or rec.finish_reason is not None:
            self._free(seq)
            seq.out.put(_DONE)

    def _free(self, seq: _Seq) -> None:
        """Take a running sequence out; the last running slot moves into its hole (and a prefill in progress moves
        down with it), so running sequences always fill slots 0..n-1."""
        i = self.running.index(seq)
        last = len(self.running) - 1
        if i != last:
            self._move(last, i, self.running[last].pos)
        self.running[i] = self.running[last]
        self.running.pop()
        if self.prefilling is not None:
            self._move(last + 1, last, self.prefilling.pos)

    def _move(self, src: int, dst: int, length: int) -> None:
        for k, v in self.kv:
            k[dst, :, :length] = k[src, :, :length]
            v[dst, :, :length] = v[src, :, :length]


def stream_batched(engine: BatchEngine, prompt_ids: list[int], sampling: Sampling, thinking_open: bool = False,
                   images=(), speculate: str | None = None):
    """`Runner.stream` through the engine: the same Records, generated beside other requests."""
    prepared = None
    if images:
        prompt_ids, prepared = engine.runner.vision.prepare(list(prompt_ids), images)
    handle = engine.submit(prompt_ids, sampling, thinking_open, prepared, speculate=speculate)
    try:
        yield from handle
    finally:
        handle.close()


__all__ = ["BatchEngine", "Handle", "Record", "stream_batched"]
