"""Prometheus metrics of the server (one registry per app, so tests can run several apps).

Per-request metrics are counted by the routes as requests finish; the adapter tiers' metrics (loads, cache hits
and misses, evictions, load latency, residents and bytes per tier) are read from the engine's store when
/metrics is scraped (``AdapterTiers``), so the step loop never pays for them.
"""

from __future__ import annotations

from typing import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily


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
        self.active_adapters = Gauge("paratune_active_adapters", "Adapters in memory (host cache)",
                                     registry=self.registry)

    def watch_adapters(self, stats: Callable[[], dict], available: Callable[[], int]) -> None:
        self.registry.register(AdapterTiers(stats, available))


class AdapterTiers:
    """A Prometheus collector over the adapter store's counters (``AsyncEngine.adapter_stats``)."""

    def __init__(self, stats: Callable[[], dict], available: Callable[[], int]):
        self.stats, self.available = stats, available

    def collect(self):
        s = self.stats()
        loads = CounterMetricFamily("paratune_adapter_loads", "Adapter loads from disk, by adapter", labels=["adapter"])
        for name, n in sorted(s["loads"].items()):
            loads.add_metric([name], n)
        yield loads
        yield CounterMetricFamily("paratune_adapter_cache_hits", "Requests whose adapter was in memory",
                                  value=s["hits"])
        yield CounterMetricFamily("paratune_adapter_cache_misses", "Requests that waited for their adapter's load",
                                  value=s["misses"])
        yield CounterMetricFamily("paratune_adapter_load_failures", "Adapter loads that failed", value=s["failures"])
        evictions = CounterMetricFamily("paratune_adapter_evictions", "Adapters evicted, by tier", labels=["tier"])
        evictions.add_metric(["host"], s["host_evictions"])
        evictions.add_metric(["device"], s["device_evictions"])
        yield evictions
        resident = GaugeMetricFamily("paratune_adapters_resident", "Adapters resident, by tier", labels=["tier"])
        resident.add_metric(["host"], s["host_resident"])
        resident.add_metric(["device"], s["device_resident"])
        yield resident
        size = GaugeMetricFamily("paratune_adapter_resident_bytes", "Bytes of the resident adapters, by tier (device: "
                                 "the slot tables)", labels=["tier"])
        size.add_metric(["host"], s["host_bytes"])
        size.add_metric(["device"], s["device_bytes"])
        yield size
        limits = GaugeMetricFamily("paratune_adapter_capacity", "Bound of each tier: bytes (host, 0 = unbounded) and "
                                   "adapters (device)", labels=["tier"])
        limits.add_metric(["host"], s["capacity"] or 0)
        limits.add_metric(["device"], s["max_active"])
        yield limits
        yield GaugeMetricFamily("paratune_adapters_available", "Adapters that can be served (on disk or in memory)",
                                value=self.available())
        buckets, counts, total, count = s["load_seconds"]
        cumulative, running = [], 0
        for edge, n in zip(buckets, counts):
            running += n
            cumulative.append((repr(float(edge)), running))
        cumulative.append(("+Inf", count))
        histogram = HistogramMetricFamily("paratune_adapter_load_seconds", "Adapter load latency (read, check, "
                                          "convert), seconds")
        histogram.add_metric([], cumulative, sum_value=total)
        yield histogram
