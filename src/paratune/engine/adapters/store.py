"""The adapter store: the host tier of the adapter tiers (disk -> host cache -> device slot tables).

Adapters are read from disk on demand, on a loader thread, and kept in a host cache bounded in bytes with
least-recently-used eviction; the device tier (``registry.AdapterRegistry``) installs host copies into slot
tables as prefills need them. What the store promises:

* **Holds.** A request holds its adapter from the moment it is accepted until it no longer needs the weights:
  a PARA or (IA)^3 request until its prefill (its own deltas carry it afterwards), a LoRA request until it
  finishes. A held adapter is never evicted; ``--pin`` holds one for ever.
* **One load per adapter.** Concurrent first requests for a tenant share one load (one future).
* **Bounded.** A load first reserves its size, read from the safetensors header, then reads; when the cache is
  full of held adapters the load waits until one is released (the engine keeps stepping meanwhile, so holds
  do get released), so the cache never holds more than its capacity (plus, transiently, the difference between
  an adapter's estimated and actual size, zero for the kinds served).
* **Failures stay with their tenant.** A corrupt, oversized or wrong-base adapter fails the loads of that name
  with an ``AdapterError`` naming the file and what is wrong, and is remembered (until its files change) so a
  tenant retrying does not make the server re-read a broken file on every request.

Everything here is thread-safe (one lock): the event loop holds and releases, the loader thread inserts and
evicts, the engine thread reads host copies and releases.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable

from .bank import CONFIG_FILE, WEIGHTS_FILE, AdapterError, Backbone
from .catalog import AdapterCatalog
from .kinds import Adapter

# Load latency buckets (seconds): fine around the 20 ms target and the 100 ms tail
LOAD_BUCKETS = (0.002, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
WAIT_FOR_SPACE_S = 120.0  # a load waits this long for held adapters to be released before it fails


class AdapterCacheFull(AdapterError):
    """Every cached adapter is held by requests and the new one does not fit: a transient condition (503)."""


class LoadTimes:
    """A fixed-bucket histogram of load latencies (Prometheus-style cumulative counts are derived on export)."""

    def __init__(self, buckets=LOAD_BUCKETS):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last: above every bucket
        self.total, self.count = 0.0, 0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        self.total += seconds
        self.count += 1


class AdapterStore:
    def __init__(self, backbone: Backbone, catalog: AdapterCatalog, capacity_bytes: int | None = None):
        """``capacity_bytes``: the host cache's bound (None: unbounded, every adapter read stays)."""
        self.backbone, self.catalog, self.capacity = backbone, catalog, capacity_bytes
        self._lock = threading.Condition()
        self._host: collections.OrderedDict[str, Adapter] = collections.OrderedDict()  # first = least recent
        self._bytes = 0  # of the host copies
        self._reserved = 0  # of the loads under way
        self._holds: collections.Counter[str] = collections.Counter()
        self._pinned: set[str] = set()
        self._loading: dict[str, Future] = {}
        self._failed: dict[str, tuple[tuple, AdapterError]] = {}  # name -> (files' signature, error)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="paratune-adapter-load")
        self._listeners: list[Callable[[], None]] = []
        # what an operator reads in /metrics
        self.loads: collections.Counter[str] = collections.Counter()
        self.hits = self.misses = self.host_evictions = self.failures = 0
        self.load_times = LoadTimes()

    # ----- holding (any thread) -------------------------------------------------------------------------------
    def hold(self, name: str) -> Future:
        """Hold ``name`` for one request and make it resident. Returns a future that resolves to the host copy
        (at once on a hit) or raises ``AdapterError``; ``future.hit`` says whether it was resident. KeyError for a
        name that does not exist. Every hold must be ``release``d, whatever the future's outcome."""
        path = self.catalog.path(name)
        if path is None:
            raise KeyError(name)
        with self._lock:
            self._holds[name] += 1
            if name in self._failed and self._failed[name][0] is None:
                del self._failed[name]  # a transient failure (cache full): try again
            if name in self._host:
                self._host.move_to_end(name)
                self.hits += 1
                return _done(self._host[name], hit=True)
            self.misses += 1
            future = self._loading.get(name)
            if future is None:
                future = self._loading[name] = self._executor.submit(self._load, name, path)
                future.hit = False
            return future

    def release(self, name: str) -> None:
        with self._lock:
            if self._holds[name] <= 1:
                del self._holds[name]
            else:
                self._holds[name] -= 1
            self._lock.notify_all()  # a load waiting for space may fit now

    def pin(self, name: str) -> Adapter:
        """Load ``name`` now and keep it for ever (``--pin``). Raises KeyError / AdapterError."""
        adapter = self.hold(name).result()
        with self._lock:
            self._pinned.add(name)
        return adapter

    # ----- reading (engine thread) --------------------------------------------------------------------------
    def get(self, name: str) -> Adapter | None:
        """The host copy of ``name`` if resident (touching it), else None."""
        with self._lock:
            adapter = self._host.get(name)
            if adapter is not None:
                self._host.move_to_end(name)
            return adapter

    def get_quiet(self, name: str) -> Adapter | None:
        """The host copy of ``name`` if resident, without touching its place in the LRU order (for listings)."""
        with self._lock:
            return self._host.get(name)

    def failure(self, name: str) -> AdapterError | None:
        """The error of ``name``'s last load, if it failed and its files have not changed since."""
        with self._lock:
            failed = self._failed.get(name)
        if failed is None:
            return None
        if failed[0] is None:  # transient (the cache was full of held adapters): reported until the next hold
            return failed[1]
        path = self.catalog.path(name)
        return failed[1] if path is not None and _signature(path) == failed[0] else None

    def is_loading(self, name: str) -> bool:
        with self._lock:
            return name in self._loading

    def add_listener(self, callback: Callable[[], None]) -> None:
        """``callback()`` after every finished load (the async front wakes its step loop with it)."""
        self._listeners.append(callback)

    # ----- changing what exists -------------------------------------------------------------------------------
    def forget(self, name: str) -> None:
        """Drop ``name`` from the host tier and the catalog (the caller has drained its requests)."""
        self.catalog.forget(name)
        with self._lock:
            self._pinned.discard(name)
            self._failed.pop(name, None)
            adapter = self._host.pop(name, None)
            if adapter is not None:
                self._bytes -= adapter.nbytes
            self._lock.notify_all()

    # ----- state -----------------------------------------------------------------------------------------------
    def resident(self) -> list[str]:
        with self._lock:
            return list(self._host)

    def resident_kinds(self) -> dict[str, str]:
        """{name: kind} of the cached adapters, sorted by name."""
        with self._lock:
            return {name: self._host[name].kind for name in sorted(self._host)}

    def stats(self) -> dict:
        """One consistent reading of the counters the metrics export."""
        with self._lock:
            times = self.load_times
            return {"loads": dict(self.loads), "hits": self.hits, "misses": self.misses,
                    "host_evictions": self.host_evictions, "failures": self.failures,
                    "host_resident": len(self._host), "host_bytes": self._bytes, "capacity": self.capacity,
                    "load_seconds": (times.buckets, list(times.counts), times.total, times.count)}

    def is_resident(self, name: str) -> bool:
        with self._lock:
            return name in self._host

    @property
    def bytes(self) -> int:
        return self._bytes

    def is_held(self, name: str) -> bool:
        with self._lock:
            return self._holds[name] > 0 or name in self._pinned

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    # ----- the loader thread -----------------------------------------------------------------------------------
    def _load(self, name: str, path: Path) -> Adapter:
        start = time.perf_counter()
        try:
            adapter = self._read(name, path)
        except AdapterError as error:
            with self._lock:
                self.failures += 1
                self._failed[name] = (None if isinstance(error, AdapterCacheFull) else _signature(path), error)
            raise
        finally:
            with self._lock:
                self._loading.pop(name, None)
            for callback in self._listeners:
                callback()
        with self._lock:
            self.loads[name] += 1
            self.load_times.observe(time.perf_counter() - start)
        return adapter

    def _read(self, name: str, path: Path) -> Adapter:
        failed = self.failure(name)
        if failed is not None and not isinstance(failed, AdapterCacheFull):
            raise failed  # the same broken files as last time
        estimate = self.backbone.estimate_bytes(path)
        if self.capacity is not None and estimate > self.capacity:
            raise AdapterError(f"{path / WEIGHTS_FILE}: the adapter needs {estimate:,} bytes in memory, more than "
                               f"the whole adapter cache ({self.capacity:,} bytes, --adapter-cache-bytes)")
        self._reserve(name, estimate)
        try:
            adapter = self.backbone.read(name, path)
        finally:
            with self._lock:
                self._reserved -= estimate
        with self._lock:
            self._make_room(adapter.nbytes)  # no wait: the reservation made room for the estimate
            self._host[name] = adapter
            self._bytes += adapter.nbytes
            self._failed.pop(name, None)
            self._lock.notify_all()
        return adapter

    def _reserve(self, name: str, size: int) -> None:
        if self.capacity is None:
            return
        deadline = time.monotonic() + WAIT_FOR_SPACE_S
        with self._lock:
            while not self._make_room(size):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AdapterCacheFull(
                        f"adapter {name!r} does not fit the adapter cache ({self.capacity:,} bytes): every cached "
                        f"adapter is in use by running or queued requests; retry later or raise "
                        f"--adapter-cache-bytes")
                self._lock.wait(timeout=min(left, 1.0))
            self._reserved += size

    def _make_room(self, size: int) -> bool:
        """Evict unheld adapters, least recently used first, until ``size`` more bytes fit (lock held)."""
        if self.capacity is None:
            return True
        for victim in [n for n in self._host if self._holds[n] == 0 and n not in self._pinned]:
            if self._bytes + self._reserved + size <= self.capacity:
                break
            self._bytes -= self._host.pop(victim).nbytes
            self.host_evictions += 1
        return self._bytes + self._reserved + size <= self.capacity


def _done(adapter: Adapter, hit: bool) -> Future:
    future = Future()
    future.set_result(adapter)
    future.hit = hit
    return future


def _signature(path: Path) -> tuple:
    """What says an adapter's files changed: size and modification time of both."""
    out = []
    for file in (CONFIG_FILE, WEIGHTS_FILE):
        try:
            stat = (path / file).stat()
            out.append((stat.st_size, stat.st_mtime_ns))
        except OSError:
            out.append(None)
    return tuple(out)
