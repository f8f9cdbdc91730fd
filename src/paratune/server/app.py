"""The OpenAI-compatible HTTP API (FastAPI), wired together: the async front over the engine, the shared
generation service, middleware, error handlers and the routes. The adapter is named in ``model``; the base model
by its own name. Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
"""

from __future__ import annotations

from contextlib import asynccontextmanager

from fastapi import FastAPI

from ..engine import Engine
from ..engine.async_engine import AsyncEngine
from .config import ServerConfig
from .errors import install_error_handlers
from .generation import GenerationService
from .metrics import ServerMetrics
from .middleware import ApiKeyAuth, BodyLimit
from .routes import ROUTERS

__all__ = ["ServerConfig", "create_app"]


def create_app(engine: Engine, config: ServerConfig, engine_thread: bool = True) -> FastAPI:
    """``engine_thread=False``: the caller runs ``app.state.front.run()`` (the step loop) itself.

    From here on the server reaches the engine only through ``app.state.front``; what it reads of the engine
    directly is fixed at start (tokenizer, vocabulary size, batch slots)."""
    front = AsyncEngine(engine, own_thread=engine_thread)
    metrics = ServerMetrics()
    metrics.watch_adapters(front.adapter_stats, lambda: len(front.available()))
    # After the front is made: it wraps the tokenizer in a lock shared with the engine thread.
    generation = GenerationService(front, config, metrics, tokenizer=engine.tokenizer,
                                   vocab_size=engine.model.get_input_embeddings().num_embeddings,
                                   max_batch=engine.max_batch)

    @asynccontextmanager
    async def lifespan(app):
        yield
        front.shutdown()

    app = FastAPI(title="paratune", version="0.1.0", lifespan=lifespan)
    app.state.front, app.state.metrics, app.state.config, app.state.generation = front, metrics, config, generation
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    if config.api_key:
        app.add_middleware(ApiKeyAuth, key=config.api_key)
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    return app
