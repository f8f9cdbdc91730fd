"""What every generating route shares: the model name -> adapter check, admission against the queue limit, the
sampling parameters of a body, running a request to its end (or streaming it as server-sent events) while
watching for the client going away, usage and the per-adapter metrics.

One ``GenerationService`` per app holds what this needs (the async front, the config, the metrics, and what the
engine fixed at start: tokenizer, vocabulary size, batch slots); routes get it with ``Depends(generation)``.
"""

from __future__ import annotations

import asyncio
import collections
import json
import time
import weakref

from fastapi import Request as HttpRequest
from fastapi.responses import StreamingResponse

from ..engine import Request, SamplingParams
from ..engine.async_engine import AsyncEngine
from .config import ServerConfig
from ..engine import AdapterError
from .errors import ApiError, ClientGone, adapter_failed, adapter_unloaded
from .metrics import ServerMetrics

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}  # engine finish reason -> OpenAI's
CACHE_HEADER = "paratune-adapter-cache"  # hit: the adapter was in memory; miss: this request waited for its load


class GenerationService:
    def __init__(self, front: AsyncEngine, config: ServerConfig, metrics: ServerMetrics, tokenizer, vocab_size: int,
                 max_batch: int):
        self.front, self.config, self.metrics = front, config, metrics
        self.tokenizer, self.vocab_size, self.max_batch = tokenizer, vocab_size, max_batch
        # Every request accepted and not yet finished, including those still on their way to the engine thread
        # (which the engine's own queue does not show yet). Weak, so a response dropped before it started cannot
        # hold a place in the queue forever.
        self._admitted: weakref.WeakSet[Request] = weakref.WeakSet()

    async def resolve_adapter(self, model: str) -> tuple[str | None, str | None]:
        """``model`` -> (adapter name, its kind), or (None, None) for the base model; 404 for any other name.
        Nothing is loaded yet (``load`` does that once the request passed every check)."""
        if model == self.config.model_name:
            return None, None
        if self.front.exists(model):
            try:
                return model, self.front.kind(model)
            except AdapterError as error:
                raise adapter_failed(model, error) from None
            except KeyError:  # its folder went away just now
                pass
        available = self.front.available()
        shown = [self.config.model_name, *available[:10]]
        more = f" and {len(available) - 10} more (GET /v1/models)" if len(available) > 10 else ""
        raise ApiError(404, f"model {model!r} does not exist; available: {shown}{more}", "not_found_error",
                       "model", "model_not_found")

    async def load(self, request: Request) -> dict[str, str]:
        """Hold ``request``'s adapter, waiting for its load if it is not in memory (other tenants' streams go on
        meanwhile); returns the response headers that say which it was. Call it last before the engine gets the
        request: from here on the hold is released by the engine, or by ``front.release`` if the request dies."""
        if request.adapter is None:
            return {}
        try:
            hit = await self.front.hold(request)
        except AdapterError as error:
            request.finish_reason = "cancelled"
            raise adapter_failed(request.adapter, error) from None
        except KeyError:
            request.finish_reason = "cancelled"
            raise adapter_unloaded(request.adapter) from None
        return {CACHE_HEADER: "hit" if hit else "miss"}

    def sampling(self, body, logprobs: bool) -> SamplingParams:
        config = self.config
        max_tokens = config.default_max_tokens if body.max_tokens is None else max(body.max_tokens, 1)
        if max_tokens > config.max_completion_tokens:
            raise ApiError(400, f"max_tokens must be <= {config.max_completion_tokens}, got {max_tokens}",
                           param="max_tokens")
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=body.seed, stop=body.stop or [], logprobs=logprobs,
                              ignore_eos=body.ignore_eos)

    def queued(self) -> int:
        """Requests beyond the batch's slots (a request the KV budget holds back while a slot is free is not
        counted: the budget frees up as running requests finish)."""
        return max(0, sum(1 for r in list(self._admitted) if not r.finished) - self.max_batch)

    def admit(self, ids: list[int], adapter: str | None, params: SamplingParams, param: str) -> Request:
        """A new request for ``ids``, or 400 for a prompt over the limit / 429 when the queue is full.

        The queue is shared among tenants (each adapter is one, the base model another): when the batch and the
        queue are full (``max_batch + queue_size`` requests in flight), only a tenant holding at least its share
        (that total over the tenants with requests in flight, this one included) is refused, so one tenant
        flooding the server cannot lock the others out; a lone tenant may use it all. The hard bound, whoever
        asks, is twice that total."""
        config = self.config
        if len(ids) > config.max_prompt_tokens:
            raise ApiError(400, f"prompt is {len(ids)} tokens; the limit is {config.max_prompt_tokens}",
                           param=param, code="context_length_exceeded")
        tenant = adapter or config.model_name
        in_flight = collections.Counter(r.adapter or config.model_name for r in list(self._admitted)
                                        if not r.finished)
        total, capacity = sum(in_flight.values()), self.max_batch + config.queue_size
        tenants = len(set(in_flight) | {tenant})
        share = max(1, capacity // tenants)
        if total >= 2 * capacity or (total >= capacity and in_flight[tenant] >= share):
            detail = (f"{config.queue_size} requests waiting" if tenants == 1 else
                      f"{tenant!r} has {in_flight[tenant]} requests in flight, its share ({share}) of the "
                      f"{capacity} places while {tenants} tenants have requests")
            endpoint = {"prompt": "completions", "messages": "chat"}.get(param, param)
            self.metrics.requests.labels(tenant, endpoint, "429").inc()  # refusals per tenant, for the operator
            raise ApiError(429, f"the queue is full ({detail}); retry later", "rate_limit_error", None, "queue_full",
                           headers={"Retry-After": "1"})
        request = Request(ids, adapter, params)
        self._admitted.add(request)
        return request

    @staticmethod
    def usage(request: Request) -> dict:
        return {"prompt_tokens": len(request.prompt_ids), "completion_tokens": len(request.output_ids),
                "total_tokens": len(request.prompt_ids) + len(request.output_ids)}

    def observe(self, request: Request, endpoint: str, start: float, status: int) -> None:
        """Count a finished request in the metrics, labelled by its adapter (the base model by its name)."""
        label = request.adapter or self.config.model_name
        self.metrics.requests.labels(label, endpoint, str(status)).inc()
        self.metrics.prompt_tokens.labels(label).inc(len(request.prompt_ids))
        self.metrics.completion_tokens.labels(label).inc(len(request.output_ids))
        self.metrics.latency.labels(label).observe(time.perf_counter() - start)

    def token_logprobs(self, request: Request) -> tuple[list[str], list[float]]:
        tokens = [self.tokenizer.decode([t]) for t in request.output_ids[: len(request.logprobs)]]
        return tokens, request.logprobs

    async def run_to_end(self, http: HttpRequest, request: Request, start: float, endpoint: str) -> Request:
        """Run to completion unless the client goes away (then cancel and free the slot), and count it."""
        done = await self._finish(http, request)
        if done is None:
            self.observe(request, endpoint, start, 499)
            raise ClientGone
        if done.finish_reason == "error":
            self.observe(done, endpoint, start, 500)
            raise ApiError(500, "generation failed", "server_error")
        self.observe(done, endpoint, start, 200)
        return done

    async def _finish(self, http: HttpRequest, request: Request) -> Request | None:
        task = asyncio.create_task(self.front.complete(request))
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
        try:
            return task.result()
        except KeyError:  # its adapter was unloaded between the model check and the engine taking the request
            raise adapter_unloaded(request.adapter) from None

    def stream(self, request: Request, start: float, endpoint: str, to_chunk,
               headers: dict | None = None, usage_chunk=None) -> StreamingResponse:
        """Server-sent events: ``to_chunk(event)`` for each token, then (``usage_chunk``, for a client that asked
        with ``stream_options.include_usage``) ``usage_chunk(usage)``, then ``[DONE]``; a client that goes away
        cancels the request (the front's stream cancels it when the response's iterator is closed)."""
        front, metrics, model_name = self.front, self.metrics, self.config.model_name

        async def events():
            first = True
            status = 200
            try:
                async for event in front.stream(request):
                    if first:
                        metrics.first_token.labels(request.adapter or model_name).observe(time.perf_counter() - start)
                        first = False
                    if event.finish_reason == "error":
                        status = 500
                        yield "data: " + json.dumps({"error": {"message": "generation failed",
                                                               "type": "server_error"}}) + "\n\n"
                        return
                    yield "data: " + json.dumps(to_chunk(event)) + "\n\n"
                if usage_chunk is not None:
                    yield "data: " + json.dumps(usage_chunk(self.usage(request))) + "\n\n"
                yield "data: [DONE]\n\n"
            except KeyError:  # its adapter was unloaded between the model check and the engine taking the request
                status = 404
                error = adapter_unloaded(request.adapter)
                yield "data: " + json.dumps({"error": {"message": error.message, "type": error.type}}) + "\n\n"
            except asyncio.CancelledError:  # client went away: the stream's finally cancelled the request
                status = 499
                raise
            finally:
                self.observe(request, endpoint, start, status)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})})


def generation(http: HttpRequest) -> GenerationService:
    """The app's service, for ``Depends``."""
    return http.app.state.generation
