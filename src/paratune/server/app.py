"""The OpenAI-compatible HTTP API (FastAPI). The adapter is named in ``model``; the base model by its own name.

Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from fastapi import FastAPI, Request as HttpRequest
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..engine import AdapterError, Engine, Request, SamplingParams
from ..engine.async_engine import AsyncEngine
from ..engine.engine import NoFreeSlot
from .metrics import ServerMetrics
from .schemas import AdapterLoad, ChatCompletionRequest, CompletionRequest

FINISH = {"eos": "stop", "stop": "stop", "length": "length"}


@dataclass
class ServerConfig:
    model_name: str
    api_key: str | None = None
    queue_size: int = 256
    max_prompt_tokens: int = 2048
    max_completion_tokens: int = 1024
    default_max_tokens: int = 256
    max_body_bytes: int = 1_000_000
    adapter_root: Path | None = None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(status: int, message: str, type_: str, param=None, code=None) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


class BodyLimit:
    """ASGI middleware: refuse request bodies over ``limit`` bytes with 413 before parsing them.

    A declared Content-Length over the limit is refused at once; a body sent without one (chunked) is read up to
    the limit and then refused, or handed on whole to the app."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = error_response(413, f"request body is larger than {self.limit} bytes", "invalid_request_error")
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            return await too_large(scope, receive, send)
        if length is not None:
            return await self.app(scope, receive, send)
        messages, seen = [], 0
        while True:
            message = await receive()
            messages.append(message)
            seen += len(message.get("body", b""))
            if seen > self.limit:
                return await too_large(scope, receive, send)
            if message["type"] != "http.request" or not message.get("more_body"):
                break
        replay = iter(messages)

        async def replayed():
            return next(replay, None) or await receive()

        return await self.app(scope, replayed, send)


class ApiKeyAuth:
    """ASGI middleware: every /v1/ route needs ``Authorization: Bearer <key>``. (Pure ASGI rather than
    ``@app.middleware``: Starlette's BaseHTTPMiddleware hides client disconnects from the handlers.)"""

    def __init__(self, app, key: str):
        self.app, self.expected = app, f"Bearer {key}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            if dict(scope.get("headers") or []).get(b"authorization") != self.expected:
                response = error_response(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                                          "authentication_error", None, "invalid_api_key")
                return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def create_app(engine: Engine, config: ServerConfig, engine_thread: bool = True) -> FastAPI:
    """``engine_thread=False``: the caller runs ``app.state.front.run()`` (the step loop) itself."""
    front = AsyncEngine(engine, own_thread=engine_thread)
    metrics = ServerMetrics()
    tokenizer = engine.tokenizer
    vocab_size = engine.model.get_input_embeddings().num_embeddings

    @asynccontextmanager
    async def lifespan(app):
        yield
        front.shutdown()

    app = FastAPI(title="paratune", version="0.1.0", lifespan=lifespan)
    app.state.front, app.state.metrics, app.state.config = front, metrics, config
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyAuth, key=config.api_key)

    # ----- errors in OpenAI's shape -----------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request, error: ApiError):
        return error_response(error.status, error.message, error.type, error.param, error.code)

    @app.exception_handler(ClientGone)
    async def _gone(request, error: ClientGone):
        return JSONResponse(status_code=499, content={})  # nobody reads it; nginx's code for "client closed"

    @app.exception_handler(RequestValidationError)
    async def _validation(request, error: RequestValidationError):
        first = error.errors()[0]
        loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_type_tag(part)]
        if first.get("type") == "json_invalid":
            return error_response(400, f"request body is not valid JSON: {first.get('msg')}",
                                  "invalid_request_error", None, "invalid_json")
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg')}" if param else first.get("msg", "invalid request")
        return error_response(400, message, "invalid_request_error", param, first.get("type"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request, error: StarletteHTTPException):
        if error.status_code == 400 and error.detail == "There was an error parsing the body":
            # FastAPI's answer when json.loads fails with other than a JSONDecodeError (bad UTF-8, deep nesting)
            return error_response(400, "request body is not valid JSON (it must be UTF-8 JSON of modest depth)",
                                  "invalid_request_error", None, "invalid_json")
        type_ = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return error_response(error.status_code, str(error.detail), type_)

    @app.exception_handler(Exception)
    async def _unexpected(request, error: Exception):
        return error_response(500, f"internal error: {type(error).__name__}", "server_error")

    # ----- helpers ------------------------------------------------------------------------------------------
    def resolve_adapter(model: str) -> str | None:
        if model == config.model_name:
            return None
        if model in engine.bank.adapters and not front.is_draining(model):
            return model
        available = [config.model_name, *sorted(engine.bank.adapters)]
        raise ApiError(404, f"model {model!r} does not exist; available: {available}", "not_found_error",
                       "model", "model_not_found")

    def sampling(body, logprobs: bool) -> SamplingParams:
        max_tokens = config.default_max_tokens if body.max_tokens is None else max(body.max_tokens, 1)
        if max_tokens > config.max_completion_tokens:
            raise ApiError(400, f"max_tokens must be <= {config.max_completion_tokens}, got {max_tokens}",
                           param="max_tokens")
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, top_p=body.top_p,
                              top_k=body.top_k, seed=body.seed, stop=body.stop or [], logprobs=logprobs,
                              ignore_eos=body.ignore_eos)

    # Every request accepted and not yet finished, including those still on their way to the engine thread
    # (which the engine's own queue does not show yet). Weak, so a response dropped before it started cannot
    # hold a place in the queue forever.
    admitted: weakref.WeakSet[Request] = weakref.WeakSet()

    def queued() -> int:
        """Requests beyond the batch's slots (a request the KV budget holds back while a slot is free is not
        counted: the budget frees up as running requests finish)."""
        return max(0, sum(1 for r in list(admitted) if not r.finished) - engine.max_batch)

    def admit(ids: list[int], adapter: str | None, params: SamplingParams, param: str) -> Request:
        if len(ids) > config.max_prompt_tokens:
            raise ApiError(400, f"prompt is {len(ids)} tokens; the limit is {config.max_prompt_tokens}",
                           param=param, code="context_length_exceeded")
        if queued() >= config.queue_size:
            raise ApiError(429, f"the queue is full ({config.queue_size} requests waiting); retry later",
                           "rate_limit_error", None, "queue_full")
        request = Request(ids, adapter, params)
        admitted.add(request)
        return request

    def usage(request: Request) -> dict:
        return {"prompt_tokens": len(request.prompt_ids), "completion_tokens": len(request.output_ids),
                "total_tokens": len(request.prompt_ids) + len(request.output_ids)}

    def observe(request: Request, endpoint: str, start: float, status: int) -> None:
        label = request.adapter or config.model_name
        metrics.requests.labels(label, endpoint, str(status)).inc()
        metrics.prompt_tokens.labels(label).inc(len(request.prompt_ids))
        metrics.completion_tokens.labels(label).inc(len(request.output_ids))
        metrics.latency.labels(label).observe(time.perf_counter() - start)

    async def run_to_end(http: HttpRequest, request: Request, start: float, endpoint: str) -> Request:
        """Run to completion unless the client goes away (then cancel and free the slot), and count it."""
        done = await finish(http, request)
        if done is None:
            observe(request, endpoint, start, 499)
            raise ClientGone
        if done.finish_reason == "error":
            observe(done, endpoint, start, 500)
            raise ApiError(500, "generation failed", "server_error")
        observe(done, endpoint, start, 200)
        return done

    async def finish(http: HttpRequest, request: Request) -> Request | None:
        task = asyncio.create_task(front.complete(request))
        while not task.done():
            await asyncio.wait({task}, timeout=0.25)
            if not task.done() and await http.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return None
        try:
            return task.result()
        except KeyError:  # its adapter was unloaded between the model check and the engine taking the request
            raise ApiError(404, f"model {request.adapter!r} was unloaded", "not_found_error", "model",
                           "model_not_found") from None

    def token_logprobs(request: Request) -> tuple[list[str], list[float]]:
        tokens = [tokenizer.decode([t]) for t in request.output_ids[: len(request.logprobs)]]
        return tokens, request.logprobs

    # ----- endpoints --------------------------------------------------------------------------------------
    @app.get("/health")
    async def health():
        return {"status": "ok", "running": len(engine.running), "waiting": queued()}

    @app.get("/metrics")
    async def prometheus():
        metrics.queue_depth.set(queued())
        metrics.running.set(len(engine.running))
        metrics.active_adapters.set(len(engine.bank.adapters))
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def models():
        now = int(time.time())
        data = [{"id": config.model_name, "object": "model", "created": now, "owned_by": "paratune"}]
        data += [{"id": name, "object": "model", "created": now, "owned_by": "paratune",
                  "parent": config.model_name, "adapter_type": engine.bank.kind(name)}
                 for name in sorted(engine.bank.adapters) if not front.is_draining(name)]
        return {"object": "list", "data": data}

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, http: HttpRequest):
        start = time.perf_counter()
        adapter = resolve_adapter(body.model)
        ids = list(body.prompt) if isinstance(body.prompt, list) else tokenizer(body.prompt)["input_ids"]
        if isinstance(body.prompt, list) and max(ids) >= vocab_size:
            raise ApiError(400, f"prompt token ids must be < {vocab_size} (the vocabulary size)", param="prompt")
        if body.max_tokens == 0 and not body.echo:
            raise ApiError(400, "max_tokens: Input should be greater than or equal to 1 (0 is allowed only with "
                           "echo=true, to score the prompt)", param="max_tokens")
        scoring = body.echo and body.logprobs is not None
        context = check_context(body, ids, adapter, scoring)
        request = admit(ids, adapter, sampling(body, body.logprobs is not None), "prompt")
        rid, created = f"cmpl-{uuid.uuid4().hex}", int(time.time())
        prompt_text = body.prompt if isinstance(body.prompt, str) else tokenizer.decode(ids)

        def chunk(text, finish_reason, logprobs=None):
            return {"id": rid, "object": "text_completion", "created": created, "model": body.model,
                    "choices": [{"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}]}

        if scoring and body.stream:
            raise ApiError(400, "echo with logprobs is not streamed; send stream=false", param="stream")
        if body.stream:
            return stream(http, request, start, "completions",
                          lambda ev: chunk(ev.text, FINISH.get(ev.finish_reason) if ev.finish_reason else None))
        if scoring:
            return await echo_scores(body, http, request, ids, context, prompt_text, start, chunk)
        if body.max_tokens == 0:  # echo without logprobs: the prompt, nothing generated
            request.finish_reason = "length"
            observe(request, "completions", start, 200)
            return {**chunk(prompt_text, "length"), "usage": usage(request)}
        done = await run_to_end(http, request, start, "completions")
        logprobs = None
        if done.params.logprobs:
            tokens, values = token_logprobs(done)
            logprobs = {"tokens": tokens, "token_logprobs": values, "top_logprobs": None, "text_offset": None}
        body_text = (prompt_text if body.echo else "") + done.text
        return {**chunk(body_text, FINISH.get(done.finish_reason, "stop"), logprobs), "usage": usage(done)}

    def check_context(body, ids: list[int], adapter: str | None, scoring: bool) -> int:
        """How many leading prompt tokens a PARA adapter pools (all of them unless ``context_tokens``)."""
        n = body.context_tokens
        if n is not None and n > len(ids):
            raise ApiError(400, f"context_tokens is {n} but the prompt has {len(ids)} tokens", param="context_tokens")
        para = adapter is not None and engine.bank.kind(adapter) == "PARA"
        if para and scoring and n is None:
            raise ApiError(400, f"{adapter!r} is a PARA adapter: echo with logprobs scores the prompt, and a PARA "
                           "adapter must pool only the context part of it, never the continuation being scored. "
                           "Send context_tokens (the number of leading prompt tokens that are the context), e.g. "
                           "with lm-eval's model 'paratune-completions' (paratune.evaluation.api), which sends it",
                           param="context_tokens", code="context_required")
        if para and n is not None and n < len(ids) and (body.max_tokens is None or body.max_tokens > 1):
            raise ApiError(400, "with context_tokens shorter than the prompt a PARA adapter can score the prompt and "
                           "at most one next token (max_tokens 0 or 1): generation pools the whole prompt",
                           param="max_tokens")
        return len(ids) if n is None else n

    async def echo_scores(body, http: HttpRequest, request: Request, ids: list[int], context: int,
                          prompt_text: str, start: float, chunk) -> dict:
        """echo + logprobs: every prompt token's log-probability (OpenAI's legacy shape, the first token None),
        from one side forward on the engine thread; with max_tokens 1 the next token comes from the same forward,
        with more the engine generates them after."""
        top_k = body.logprobs
        want_next = body.max_tokens is not None and body.max_tokens <= 1
        try:
            scores = await front._run(lambda: score_prompt(engine, ids, request.adapter, context, top_k,
                                                           request.params if body.max_tokens == 1 else None))
        except NoFreeSlot:
            request.finish_reason = "cancelled"
            raise ApiError(429, "every KV slot is busy; retry later", "rate_limit_error", None, "queue_full") from None
        except KeyError:
            request.finish_reason = "cancelled"
            raise ApiError(404, f"model {request.adapter!r} was unloaded", "not_found_error", "model",
                           "model_not_found") from None
        tokens = [tokenizer.decode([t]) for t in ids]
        values = [None] + scores.values
        tops = [None] + [{tokenizer.decode([t]): v for t, v in row} for row in scores.top]
        generated = []
        if want_next:
            if scores.next_token is not None:
                token, value, top = scores.next_token
                request.output_ids.append(token)
                generated = [(tokenizer.decode([token]), value, {tokenizer.decode([t]): v for t, v in top})]
            request.finish_reason = "length"
            observe(request, "completions", start, 200)
            text_tail = "".join(g[0] for g in generated)
            finish = "length"
        else:
            done = await run_to_end(http, request, start, "completions")
            text_tail, finish = done.text, FINISH.get(done.finish_reason, "stop")
            generated = [(tokenizer.decode([t]), v, None) for t, v in zip(done.output_ids, done.logprobs)]
        offsets = text_offsets(ids, prompt_text)
        end = len(prompt_text)
        for g in generated:
            offsets.append(end)
            end += len(g[0])
        logprobs = {"tokens": tokens + [g[0] for g in generated],
                    "token_logprobs": values + [g[1] for g in generated],
                    "top_logprobs": tops + [g[2] for g in generated],
                    "text_offset": offsets}
        return {**chunk(prompt_text + text_tail, finish, logprobs), "usage": usage(request)}

    def text_offsets(ids: list[int], text: str) -> list[int]:
        """Character offset of each prompt token in the echoed text (decoded prefix lengths, clipped to it)."""
        return [min(len(tokenizer.decode(ids[:i])), len(text)) for i in range(len(ids))]

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, http: HttpRequest):
        start = time.perf_counter()
        adapter = resolve_adapter(body.model)
        if not getattr(tokenizer, "chat_template", None):
            raise ApiError(400, "this backbone has no chat template; use /v1/completions", param="messages")
        messages = [m.model_dump() for m in body.messages]
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                            return_dict=True)["input_ids"]
        request = admit(ids, adapter, sampling(body, body.logprobs), "messages")
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(delta, finish_reason):
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": body.model,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]}

        if body.stream:
            first = [True]

            def event(ev):
                delta = {"role": "assistant", "content": ev.text} if first[0] else (
                    {"content": ev.text} if ev.text or not ev.finish_reason else {})
                first[0] = False
                return chunk(delta, FINISH.get(ev.finish_reason) if ev.finish_reason else None)

            return stream(http, request, start, "chat", event)
        done = await run_to_end(http, request, start, "chat")
        logprobs = None
        if done.params.logprobs:
            tokens, values = token_logprobs(done)
            logprobs = {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                                    for t, v in zip(tokens, values)]}
        return {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": done.text},
                             "logprobs": logprobs, "finish_reason": FINISH.get(done.finish_reason, "stop")}],
                "usage": usage(done)}

    def stream(http: HttpRequest, request: Request, start: float, endpoint: str, to_chunk) -> StreamingResponse:
        async def events():
            first = True
            status = 200
            try:
                async for event in front.stream(request):
                    if first:
                        metrics.first_token.labels(request.adapter or config.model_name).observe(
                            time.perf_counter() - start)
                        first = False
                    if event.finish_reason == "error":
                        status = 500
                        yield "data: " + json.dumps({"error": {"message": "generation failed",
                                                               "type": "server_error"}}) + "\n\n"
                        return
                    yield "data: " + json.dumps(to_chunk(event)) + "\n\n"
                yield "data: [DONE]\n\n"
            except KeyError:  # its adapter was unloaded between the model check and the engine taking the request
                status = 404
                yield "data: " + json.dumps({"error": {"message": f"model {request.adapter!r} was unloaded",
                                                       "type": "not_found_error"}}) + "\n\n"
            except asyncio.CancelledError:  # client went away: the stream's finally cancelled the request
                status = 499
                raise
            finally:
                observe(request, endpoint, start, status)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/adapters")
    async def list_adapters():
        return {"object": "list", "data": [{"id": n, "object": "adapter", "type": engine.bank.kind(n)}
                                           for n in sorted(engine.bank.adapters) if not front.is_draining(n)]}

    @app.post("/v1/adapters")
    async def load_adapter(body: AdapterLoad):
        if body.name == config.model_name or body.name in engine.bank.adapters:
            raise ApiError(409, f"an adapter or model named {body.name!r} already exists", param="name")
        path = safe_adapter_path(config.adapter_root, body.path)
        try:
            kind = await front.add_adapter(body.name, path)
        except AdapterError as error:
            raise ApiError(400, str(error), param="path") from None
        return {"id": body.name, "object": "adapter", "type": kind}

    @app.delete("/v1/adapters/{name}")
    async def unload_adapter(name: str):
        if name not in engine.bank.adapters or front.is_draining(name):
            raise ApiError(404, f"no adapter named {name!r}", "not_found_error", "name")
        await front.remove_adapter(name)
        return {"id": name, "object": "adapter", "deleted": True}

    return app


@dataclass
class PromptScores:
    values: list[float]  # log-probability of prompt token t given tokens < t, t = 1 .. T-1
    top: list[list[tuple[int, float]]]  # the top-k (token, log-probability) at each of those positions
    next_token: tuple[int, float, list[tuple[int, float]]] | None  # sampled after the prompt, when asked


def score_prompt(engine: Engine, ids: list[int], adapter: str | None, context: int, top_k: int,
                 next_params: SamplingParams | None) -> PromptScores:
    """Log-probabilities of every prompt token under ``adapter`` (``Engine.prompt_logits``: one forward on the
    engine thread between steps, no KV written; a PARA adapter pools tokens [0, context) only), and with
    ``next_params`` the next token sampled from the same forward."""
    import torch
    import torch.nn.functional as F

    from ..engine.sampler import Sampler

    T = len(ids)
    logits = engine.prompt_logits(ids, adapter, context)
    logp = F.log_softmax(logits, dim=-1)
    target = torch.tensor(ids[1:], device=logp.device)
    values = logp[:-1].gather(-1, target[:, None])[:, 0].tolist()
    top: list[list[tuple[int, float]]] = [[] for _ in range(T - 1)]
    if top_k:
        best = logp[:-1].topk(top_k, dim=-1)
        top = [list(zip(i, v)) for i, v in zip(best.indices.tolist(), best.values.tolist())]
    next_token = None
    if next_params is not None:
        sampler = Sampler(engine.device)
        generator = torch.Generator(device=engine.device).manual_seed(next_params.seed) \
            if next_params.seed is not None else None
        sampler.set_rows([next_params], [generator])
        token = int(sampler(logits[-1:])[0][0])
        last = logp[-1]
        best = last.topk(max(top_k, 1))
        next_token = (token, float(last[token]), list(zip(best.indices.tolist(), best.values.tolist()))[:top_k])
    return PromptScores(values, top, next_token)


def _is_type_tag(part) -> bool:
    """Pydantic names the branch of a union in an error's location ("str", "list[str]", "function-after[...]");
    the API's ``param`` names only fields and indices."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list", "dict", "none"}
                                      or "[" in part)


def safe_adapter_path(root: Path | None, path: str) -> Path:
    """``path`` (relative to the adapter root) resolved, symlinks included, and checked to stay inside it."""
    if root is None:
        raise ApiError(400, "runtime adapter loading is disabled: start the server with --adapter-dir", param="path")
    if "\x00" in path:
        raise ApiError(400, "path contains a NUL byte", param="path")
    root = Path(root).resolve()
    candidate = Path(path)
    resolved = (candidate if candidate.is_absolute() else root / candidate).resolve()
    if not resolved.is_relative_to(root):
        raise ApiError(400, f"path {path!r} is outside the adapter root", param="path", code="path_outside_root")
    if not resolved.is_dir():
        raise ApiError(404, f"no adapter folder {path!r} under the adapter root", "not_found_error", "path")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        file = resolved / name
        if file.exists() and not file.resolve().is_relative_to(root):
            raise ApiError(400, f"{name} of {path!r} links outside the adapter root", param="path",
                           code="path_outside_root")
    return resolved
