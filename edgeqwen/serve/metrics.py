"""Request/token/latency counters rendered in Prometheus text format."""

from __future__ import annotations

import threading
import time
from collections import defaultdict


def _label(value) -> str:
    """Prometheus label value escaping: a model name cannot inject a metric line."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)  # seconds


class Histogram:
    """A Prometheus histogram per model: cumulative buckets, sum and count."""

    def __init__(self):
        self.counts = defaultdict(lambda: [0] * (len(BUCKETS) + 1))
        self.sums = defaultdict(float)

    def observe(self, model: str, seconds: float) -> None:
        i = next((k for k, b in enumerate(BUCKETS) if seconds <= b), len(BUCKETS))
        self.counts[model][i] += 1
        self.sums[model] += seconds

    def render(self, name: str, help_text: str) -> list[str]:
        lines = [f"# HELP {name} {help_text}", f"# TYPE {name} histogram"]
        for model, counts in self.counts.items():
            m = _label(model)
            running = 0
            for bound, c in zip([*map(str, BUCKETS), "+Inf"], counts):
                running += c
                lines.append(f'{name}_bucket{{model="{m}",le="{bound}"}} {running}')
            lines += [f'{name}_sum{{model="{m}"}} {self.sums[model]:.4f}', f'{name}_count{{model="{m}"}} {running}']
        return lines


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = defaultdict(int)  # (model, outcome: completed | disconnected | failed)
        self.errors = defaultdict(int)
        self.generated = defaultdict(int)
        self.latency_sum = defaultdict(float)
        self.queue_sum = defaultdict(float)
        self.busy_s = defaultdict(float)
        self.latency = Histogram()
        self.ttft = Histogram()
        self.t0 = time.time()

    def count_error(self, status: int) -> None:
        with self.lock:
            self.errors[status] += 1

    def tokens(self, model: str, n: int) -> None:
        with self.lock:
            self.generated[model] += n

    def observe(self, model: str, outcome: str, queue_s: float, generate_s: float, ttft_s: float | None = None) -> None:
        with self.lock:
            self.latency.observe(model, queue_s + generate_s)
            if ttft_s is not None:
                self.ttft.observe(model, ttft_s)
            self.requests[(model, outcome)] += 1
            self.latency_sum[model] += queue_s + generate_s
            self.queue_sum[model] += queue_s
            self.busy_s[model] += generate_s  # tokens/s counts generation time only, not time spent queued

    def render(self, loaded: list[str], engines: dict | None = None) -> str:
        batch = []
        for name, e in (engines or {}).items():  # continuous batching: what each model is doing right now
            m = _label(name)
            batch += [f'edgeqwen_batch_active_sequences{{model="{m}"}} {e.active}',
                      f'edgeqwen_batch_waiting_requests{{model="{m}"}} {e.queued}',
                      f'edgeqwen_batch_max_sequences{{model="{m}"}} {e.max_batch}',
                      f'edgeqwen_decode_steps_total{{model="{m}"}} {e.steps}',
                      f'edgeqwen_decode_sequence_steps_total{{model="{m}"}} {e.batch_tokens}']
        if batch:
            batch = ["# HELP edgeqwen_batch_active_sequences Sequences decoding or prefilling now (continuous batching).",
                     "# TYPE edgeqwen_batch_active_sequences gauge",
                     "# HELP edgeqwen_decode_sequence_steps_total Sequences advanced, summed over decode steps "
                     "(÷ edgeqwen_decode_steps_total = mean batch size).", *batch]
        with self.lock:
            lines = [
                "# HELP edgeqwen_requests_total Completion requests that reached a model, by outcome.",
                "# TYPE edgeqwen_requests_total counter",
                *(f'edgeqwen_requests_total{{model="{_label(m)}",outcome="{o}"}} {v}'
                  for (m, o), v in self.requests.items()),
                "# HELP edgeqwen_generated_tokens_total Generated tokens.",
                "# TYPE edgeqwen_generated_tokens_total counter",
                *(f'edgeqwen_generated_tokens_total{{model="{_label(m)}"}} {v}' for m, v in self.generated.items()),
                "# HELP edgeqwen_request_latency_seconds_sum Total request latency (queue + generation).",
                "# TYPE edgeqwen_request_latency_seconds_sum counter",
                *(f'edgeqwen_request_latency_seconds_sum{{model="{_label(m)}"}} {v:.4f}' for m, v in self.latency_sum.items()),
                "# HELP edgeqwen_queue_seconds_sum Time requests waited for their model.",
                "# TYPE edgeqwen_queue_seconds_sum counter",
                *(f'edgeqwen_queue_seconds_sum{{model="{_label(m)}"}} {v:.4f}' for m, v in self.queue_sum.items()),
                "# HELP edgeqwen_tokens_per_second Generated tokens per second of generation time (queue excluded).",
                "# TYPE edgeqwen_tokens_per_second gauge",
                *(f'edgeqwen_tokens_per_second{{model="{_label(m)}"}} {self.generated[m] / v:.2f}'
                  for m, v in self.busy_s.items() if v > 0),
                *self.latency.render("edgeqwen_request_duration_seconds", "Request latency, queue included."),
                *self.ttft.render("edgeqwen_time_to_first_token_seconds", "Time to the first token, queue included."),
                "# HELP edgeqwen_errors_total Error responses by HTTP status (500: unexpected failures).",
                "# TYPE edgeqwen_errors_total counter",
                *(f'edgeqwen_errors_total{{status="{s}"}} {v}' for s, v in self.errors.items()),
                "# TYPE edgeqwen_loaded_models gauge",
                f"edgeqwen_loaded_models {len(loaded)}",
                *batch,
            ]
        return "\n".join(lines) + "\n"
