"""The server's metrics, kept and rendered by `prometheus_client` (one registry per server): request outcomes, tokens,
queue and generation time apart, latency and time-to-first-token histograms, errors by status, and the batch engines'
state read at scrape time. Label values are escaped by the library (a model name cannot inject a metric line)."""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

disable_created_metrics()  # no `*_created` series beside every counter and histogram

BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


class _Engines:
    """Continuous batching, as it is at scrape time: active and waiting sequences, decode steps and the sequences they
    advanced (their ratio is the mean batch size)."""

    def __init__(self):
        self.source = dict
        self.providers = dict

    def collect(self):
        provider = GaugeMetricFamily("edgeqwen_model_provider", "1 per loaded model: the execution provider its "
                                     "session got, and whether that is the artifact's declared fallback (the provider "
                                     "it names is missing here).", labels=["model", "provider", "fallback"])
        for name, (got, fell_back) in self.providers().items():
            provider.add_metric([name, got, "true" if fell_back else "false"], 1)
        engines = self.source()
        active = GaugeMetricFamily("edgeqwen_batch_active_sequences", "Sequences decoding or prefilling now.", labels=["model"])
        waiting = GaugeMetricFamily("edgeqwen_batch_waiting_requests", "Requests waiting for a batch slot.", labels=["model"])
        slots = GaugeMetricFamily("edgeqwen_batch_max_sequences", "Batch slots (--max-batch).", labels=["model"])
        steps = CounterMetricFamily("edgeqwen_decode_steps", "Batched decode steps.", labels=["model"])
        rows = CounterMetricFamily("edgeqwen_decode_sequence_steps", "Sequences advanced, summed over decode steps "
                                   "(divided by edgeqwen_decode_steps_total: the mean batch size).", labels=["model"])
        drafted = CounterMetricFamily("edgeqwen_speculative_drafted_tokens", "Draft tokens proposed by speculative "
                                      "decoding (requests with speculate: lookup).", labels=["model"])
        accepted = CounterMetricFamily("edgeqwen_speculative_accepted_tokens", "Draft tokens the model's own decoding "
                                       "agreed with (divided by the drafted: the acceptance rate).", labels=["model"])
        for name, e in engines.items():
            drafted.add_metric([name], e.drafted)
            accepted.add_metric([name], e.accepted)
            active.add_metric([name], e.active)
            waiting.add_metric([name], e.queued)
            slots.add_metric([name], e.max_batch)
            steps.add_metric([name], e.steps)
            rows.add_metric([name], e.batch_tokens)
        return [provider, active, waiting, slots, steps, rows, drafted, accepted]


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("edgeqwen_requests", "Completion requests that reached a model, by outcome.",
                                ["model", "outcome"], registry=r)
        self.generated = Counter("edgeqwen_generated_tokens", "Generated tokens.", ["model"], registry=r)
        self.latency_sum = Counter("edgeqwen_request_latency_seconds", "Total request latency (queue + generation).",
                                   ["model"], registry=r)
        self.queue_sum = Counter("edgeqwen_queue_seconds", "Time requests waited for their model.", ["model"],
                                 registry=r)
        self.busy = Counter("edgeqwen_generation_seconds", "Time spent generating (queue excluded).", ["model"],
                            registry=r)
        self.tps = Gauge("edgeqwen_tokens_per_second", "Generated tokens per second of generation time (queue "
                         "excluded).", ["model"], registry=r)
        self.latency = Histogram("edgeqwen_request_duration_seconds", "Request latency, queue included.", ["model"],
                                 buckets=BUCKETS, registry=r)
        self.ttft = Histogram("edgeqwen_time_to_first_token_seconds", "Time to the first token, queue included.",
                              ["model"], buckets=BUCKETS, registry=r)
        self.errors = Counter("edgeqwen_errors", "Error responses by HTTP status (500: unexpected failures).",
                              ["status"], registry=r)
        self.loaded = Gauge("edgeqwen_loaded_models", "Models loaded now.", registry=r)
        self.engines = _Engines()
        r.register(self.engines)
        self._lock = threading.Lock()
        self._totals: dict[str, list[float]] = {}  # model → [tokens, generation seconds]

    def count_error(self, status: int) -> None:
        self.errors.labels(str(status)).inc()

    def tokens(self, model: str, n: int) -> None:
        self.generated.labels(model).inc(n)
        with self._lock:
            self._totals.setdefault(model, [0.0, 0.0])[0] += n

    def observe(self, model: str, outcome: str, queue_s: float, generate_s: float, ttft_s: float | None = None) -> None:
        self.latency.labels(model).observe(queue_s + generate_s)
        if ttft_s is not None:
            self.ttft.labels(model).observe(ttft_s)
        self.requests.labels(model, outcome).inc()
        self.latency_sum.labels(model).inc(queue_s + generate_s)
        self.queue_sum.labels(model).inc(queue_s)
        self.busy.labels(model).inc(generate_s)
        with self._lock:
            tokens, busy = self._totals.setdefault(model, [0.0, 0.0])
            self._totals[model][1] = busy + generate_s
            if busy + generate_s > 0:
                self.tps.labels(model).set(round(tokens / (busy + generate_s), 2))

    def render(self, loaded: list[str], engines: dict | None = None, providers: dict | None = None) -> str:
        self.loaded.set(len(loaded))
        self.engines.source = lambda: engines or {}
        self.engines.providers = lambda: providers or {}
        return generate_latest(self.registry).decode()
