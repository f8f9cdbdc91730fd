"""An asyncio front for the engine: a background thread runs the step loop; callers stream tokens.

All engine mutations (new requests, cancellations, adapter loads and unloads) and all reads of the engine's own
state (scores) are queued as commands and run by the engine thread between steps, so the engine itself needs no
locks. The adapter store is the exception by design: it is thread-safe, so the event loop asks it directly which
adapters exist and holds a request's adapter, awaiting its load (done on the store's loader thread) before the
request reaches the engine; a slow first load then never holds up the step loop. This class is the server's only
door into the engine: what the event loop needs to know without waiting for a step (how many requests run) the
engine thread publishes here as an immutable value.
"""

from __future__ import annotations

import asyncio
import collections
import queue
import threading
from dataclasses import dataclass
from typing import AsyncIterator, Callable

from .engine import Engine
from .request import Request, SamplingParams
from .scoring import PromptScores


@dataclass
class StreamEvent:
    token_id: int
    text: str  # new text since the previous event (may be "" while a multi-byte character is incomplete)
    logprob: float | None
    finish_reason: str | None


class AsyncEngine:
    def __init__(self, engine: Engine, own_thread: bool = True):
        """``own_thread=False``: the caller runs the step loop with ``run()`` on its own thread. The server does
        that on the process's main thread: PyTorch's intra-op parallelism is fast only on the first thread that
        used it (measured on a 2-core CPU: one request 1.11 s on that thread, 1.89 s on any other; docs/performance.md)."""
        self.engine = engine
        if engine.tokenizer is not None and not isinstance(engine.tokenizer, LockedTokenizer):
            engine.tokenizer = LockedTokenizer(engine.tokenizer)
        self._commands: queue.Queue[Callable[[], None]] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._listeners: dict[int, Callable[[Request, int], None]] = {}
        self._draining: set[str] = set()
        self._in_flight: collections.Counter[str | None] = collections.Counter()  # adapter -> open streams
        self.error: BaseException | None = None
        # Published by the engine thread, read on the event loop: each is replaced whole, never changed in place,
        # so a reader sees one consistent value without a lock. Adapters change only through this front.
        self._running_count = 0  # requests in the running batch after the engine thread's last step
        self.store = engine.store
        self.store.add_listener(self._wake.set)  # a finished load may let a waiting request in
        self._thread = threading.Thread(target=self._loop, name="paratune-engine", daemon=True) if own_thread else None
        if self._thread is not None:
            self._thread.start()

    def run(self) -> None:
        """The step loop on the calling thread, until ``shutdown`` (for ``own_thread=False``)."""
        self._loop()

    # ----- engine thread ----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            while True:
                try:
                    self._commands.get_nowait()()
                except queue.Empty:
                    break
            if not self.engine.has_work():
                self._publish_running()
                self._wake.wait(timeout=0.05)
                self._wake.clear()
                continue
            try:
                produced = self.engine.step()
            except BaseException as error:  # keep serving: fail the requests in flight, not the server
                self.error = error
                aborted = self.engine.abort_all("error")
                self._publish_running()
                for request in aborted:
                    self._notify(request, -1)
                continue
            # Published before the listeners hear of the step, so a client that has seen a token (or the end) never
            # reads an older count.
            self._publish_running()
            for request, token in produced:
                self._notify(request, token)
            for request in self.engine.pop_dropped():
                self._notify(request, -1)

    def _publish_running(self) -> None:
        self._running_count = len(self.engine.running)

    def _notify(self, request: Request, token: int) -> None:
        listener = self._listeners.get(request.id)
        if listener is not None:
            listener(request, token)
            if request.finished:
                self._listeners.pop(request.id, None)

    def _run(self, command: Callable[[], object]) -> "asyncio.Future":
        loop = asyncio.get_running_loop()
        future = loop.create_future()

        def wrapped():
            try:
                result = command()
            except BaseException as error:
                loop.call_soon_threadsafe(_set, future, None, error)
            else:
                loop.call_soon_threadsafe(_set, future, result, None)

        self._commands.put(wrapped)
        self._wake.set()
        return future

    # ----- public, asyncio side ---------------------------------------------------------------------------
    async def stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        """Submit ``request`` and yield its tokens as they are produced; cancelling the iterator (e.g. a client
        disconnect) cancels the request and frees its slot."""
        if request.adapter in self._draining:
            self.release(request)
            raise KeyError(f"adapter {request.adapter!r} is being unloaded")
        # Counted on the event loop before the request reaches the engine thread, so an unload that starts now
        # waits for it (the engine's own queues would not show it until the add command has run).
        self._in_flight[request.adapter] += 1
        try:
            if request.adapter is not None and not request.adapter_held:
                await self.hold(request)
            async for event in self._stream(request):
                yield event
        finally:
            self._in_flight[request.adapter] -= 1

    async def _stream(self, request: Request) -> AsyncIterator[StreamEvent]:
        loop = asyncio.get_running_loop()
        tokens: asyncio.Queue = asyncio.Queue()
        # Snapshot what the engine thread knows now: by the time the consumer reads, the request may be further.
        # (request.text is an immutable str the engine replaces as it grows: the snapshot is that token's text.)
        self._listeners[request.id] = lambda r, t: loop.call_soon_threadsafe(
            tokens.put_nowait, (t, r.finish_reason, r.logprobs[-1] if r.params.logprobs and t >= 0 else None, r.text))
        try:
            await self._run(lambda: self.engine.add_request(request))
        except BaseException:
            self.release(request)  # the engine never took it (a request it took releases its own hold)
            raise
        # Text that a stop string could still claim is held back until the request moves past it or ends.
        hold = max((len(s) for s in request.params.stop), default=1) - 1
        sent = 0
        try:
            while True:
                token, finish_reason, logprob, text = await tokens.get()
                if finish_reason is not None:  # finished (token < 0: cancelled or failed without a token)
                    yield StreamEvent(token, text[sent:], None if token < 0 else logprob, finish_reason)
                    return
                safe = max(sent, len(text) - hold)
                yield StreamEvent(token, text[sent:safe], logprob, finish_reason)
                sent = safe
        finally:
            if not request.finished:
                await self._run(lambda: self.engine.cancel(request))

    async def complete(self, request: Request) -> Request:
        async for _ in self.stream(request):
            pass
        return request

    async def score(self, ids: list[int], adapter: str | None, context: int | None = None, top_k: int = 0,
                    next_params: SamplingParams | None = None) -> PromptScores:
        """``Engine.score`` (every prompt token's log-probability, echo scoring) run on the engine thread between
        steps, its adapter loaded first off that thread. Raises ``NoFreeSlot`` when every KV slot is busy,
        KeyError for an unknown adapter and AdapterError for one that cannot be loaded."""
        if adapter is None:
            return await self._run(lambda: self.engine.score(ids, None, context, top_k, next_params))
        holder = Request([0], adapter)
        await self.hold(holder)
        try:
            return await self._run(lambda: self.engine.score(ids, adapter, context, top_k, next_params, held=True))
        finally:
            self.release(holder)

    # ----- adapters (the store is thread-safe: read and held from the event loop) -------------------------
    async def hold(self, request: Request) -> bool:
        """Hold ``request``'s adapter and wait until it is cached (loaded on the store's loader thread; concurrent
        first requests share one load). Returns True when it was already cached (a hit). Raises KeyError for an
        unknown adapter, AdapterError when it cannot be loaded (the hold is then released)."""
        future = self.store.hold(request.adapter)
        request.adapter_held = True
        try:
            # shielded: a client going away must not cancel a load that other requests share
            await asyncio.shield(asyncio.wrap_future(future))
        except BaseException:
            self.release(request)
            raise
        return future.hit

    def release(self, request: Request) -> None:
        """Release a hold the engine never took over (the request was refused or abandoned before it queued)."""
        if request.adapter_held:
            request.adapter_held = False
            self.store.release(request.adapter)

    def exists(self, name: str) -> bool:
        """Whether ``name`` can be served now (an adapter folder or added by name, and not being unloaded)."""
        return name not in self._draining and self.store.catalog.path(name) is not None

    def kind(self, name: str) -> str:
        """PARA, LORA or IA3 (read from the cached copy, else the folder's adapter_config.json)."""
        host = self.store.get_quiet(name)
        if host is not None:
            return host.kind
        path = self.store.catalog.path(name)
        if path is None:
            raise KeyError(name)
        return self.store.backbone.kind_of(path)

    def tier(self, name: str) -> str | None:
        """Where ``name`` is now: "device" (installed in the slot tables), "host" (cached) or None (on disk)."""
        if name in self.engine.registry.adapters:  # a dict membership read: atomic under the GIL
            return "device"
        return "host" if self.store.is_resident(name) else None

    def available(self, include_draining: bool = False) -> list[str]:
        """Every adapter name that can be served, sorted (one scan of the adapter folder)."""
        return [n for n in self.store.catalog.names() if include_draining or n not in self._draining]

    async def adapters(self, include_draining: bool = False) -> dict[str, str]:
        """{name: kind} of the adapters cached in memory, sorted by name; those being unloaded only with
        ``include_draining``."""
        return {name: kind for name, kind in self.store.resident_kinds().items()
                if include_draining or name not in self._draining}

    def adapter_stats(self) -> dict:
        """What the metrics export of the adapter tiers: counters, residency and bytes per tier, load times."""
        registry = self.engine.registry
        return {**self.store.stats(), "device_resident": len(registry.adapters), "device_evictions": registry.evictions,
                "device_bytes": registry.table_bytes, "max_active": registry.max_active}

    def running_count(self) -> int:
        """Requests in the running batch, as the engine thread published it after its last step (no waiting)."""
        return self._running_count

    async def add_adapter(self, name: str, path) -> str:
        """Serve the folder ``path`` as ``name`` and load it now (its read runs on the engine thread between steps:
        an explicit load is an operator's action, rare, and its errors are reported to the caller)."""
        return await self._run(lambda: self.engine.add_adapter(name, path))

    def is_draining(self, name: str | None) -> bool:
        return name in self._draining

    async def remove_adapter(self, name: str, poll: float = 0.02) -> None:
        """Stop accepting requests for ``name``, let its queued and running requests finish, then unload it."""
        if self.store.catalog.path(name) is None:
            raise KeyError(f"no adapter named {name!r}")
        self._draining.add(name)
        try:
            while self._in_flight[name] > 0:
                await asyncio.sleep(poll)
            await self._run(lambda: self.engine.remove_adapter(name))
        finally:
            self._draining.discard(name)

    def shutdown(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=5)


class LockedTokenizer:
    """A tokenizer shared by the engine thread and the event loop: the Rust tokenizers raise "Already borrowed"
    when one object is used from two threads at once, so every call goes through one lock."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self._lock = threading.Lock()

    def __getattr__(self, name):
        attribute = getattr(self._tokenizer, name)
        if not callable(attribute):
            return attribute

        def locked(*args, **kwargs):
            with self._lock:
                return attribute(*args, **kwargs)

        return locked

    def __call__(self, *args, **kwargs):
        with self._lock:
            return self._tokenizer(*args, **kwargs)

    def __len__(self):
        return len(self._tokenizer)


def _set(future: asyncio.Future, result, error) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
