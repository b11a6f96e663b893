"""Request/token/latency counters rendered in Prometheus text format."""

from __future__ import annotations

import threading
import time
from collections import defaultdict


def _label(value) -> str:
    """Prometheus label value escaping: a model name cannot inject a metric line."""
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Metrics:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = defaultdict(int)  # (model, outcome: completed | disconnected | failed)
        self.errors = defaultdict(int)
        self.generated = defaultdict(int)
        self.latency_sum = defaultdict(float)
        self.queue_sum = defaultdict(float)
        self.busy_s = defaultdict(float)
        self.t0 = time.time()

    def count_error(self, status: int) -> None:
        with self.lock:
            self.errors[status] += 1

    def tokens(self, model: str, n: int) -> None:
        with self.lock:
            self.generated[model] += n

    def observe(self, model: str, outcome: str, queue_s: float, generate_s: float) -> None:
        with self.lock:
            self.requests[(model, outcome)] += 1
            self.latency_sum[model] += queue_s + generate_s
            self.queue_sum[model] += queue_s
            self.busy_s[model] += generate_s  # tokens/s counts generation time only, not time spent queued

    def render(self, loaded: list[str]) -> str:
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
                "# HELP edgeqwen_errors_total Error responses by HTTP status (500: unexpected failures).",
                "# TYPE edgeqwen_errors_total counter",
                *(f'edgeqwen_errors_total{{status="{s}"}} {v}' for s, v in self.errors.items()),
                "# TYPE edgeqwen_loaded_models gauge",
                f"edgeqwen_loaded_models {len(loaded)}",
            ]
        return "\n".join(lines) + "\n"
