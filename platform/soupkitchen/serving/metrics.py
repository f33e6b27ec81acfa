"""Prometheus metrics of the HTTP endpoint (``GET /metrics``), kept by the ingress replica.

Ray Serve also exports its own per-replica metrics (queue lengths, replica counts, its batching
histograms) on each Ray node's metrics port; these are the request-level ones a user asks for.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class EndpointMetrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.requests = Counter(
            "soupkitchen_requests",
            "HTTP requests by endpoint, mode and status",
            ["endpoint", "mode", "status"],
            registry=r,
        )
        self.errors = Counter(
            "soupkitchen_errors", "Error responses by OpenAI error type", ["type"], registry=r
        )
        self.latency = Histogram(
            "soupkitchen_request_latency_seconds",
            "Request latency",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.first_token = Histogram(
            "soupkitchen_time_to_first_token_seconds",
            "Streaming: time to the first chunk",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens = Counter("soupkitchen_tokens", "Tokens processed", ["kind"], registry=r)
        self.batch_size = Histogram(
            "soupkitchen_batch_size",
            "Requests in the decoding batch that served a request",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge("soupkitchen_in_flight_requests", "Requests being served", registry=r)

    def done(
        self, endpoint: str, mode: str, status: int, seconds: float, error_type: str | None = None
    ) -> None:
        self.requests.labels(endpoint, mode, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)
        if error_type:
            self.errors.labels(error_type).inc()

    def served(self, prompt_tokens: int, completion_tokens: int, batch_size: int) -> None:
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        self.batch_size.observe(batch_size)

    def render(self) -> bytes:
        return generate_latest(self.registry)
