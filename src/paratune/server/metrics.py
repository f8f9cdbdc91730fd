"""Prometheus metrics of the server (one registry per app, so tests can run several apps)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ServerMetrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("paratune_requests", "Requests by adapter, endpoint and HTTP status",
                                ["adapter", "endpoint", "status"], registry=self.registry)
        self.prompt_tokens = Counter("paratune_prompt_tokens", "Prompt tokens by adapter", ["adapter"],
                                     registry=self.registry)
        self.completion_tokens = Counter("paratune_completion_tokens", "Generated tokens by adapter", ["adapter"],
                                         registry=self.registry)
        self.latency = Histogram("paratune_request_latency_seconds", "End-to-end latency by adapter", ["adapter"],
                                 registry=self.registry,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120))
        self.first_token = Histogram("paratune_time_to_first_token_seconds", "Time to first token by adapter",
                                     ["adapter"], registry=self.registry,
                                     buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30))
        self.queue_depth = Gauge("paratune_queue_depth", "Requests waiting for a batch slot", registry=self.registry)
        self.running = Gauge("paratune_running_requests", "Requests in the running batch", registry=self.registry)
        self.active_adapters = Gauge("paratune_active_adapters", "Adapters loaded", registry=self.registry)
