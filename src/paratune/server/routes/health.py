"""/health (liveness and load, for probes) and /metrics (Prometheus); both open without the API key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import PlainTextResponse
from prometheus_client import generate_latest

from ..generation import GenerationService, generation

router = APIRouter()
Service = Annotated[GenerationService, Depends(generation)]


@router.get("/health")
async def health(service: Service):
    return {"status": "ok", "running": service.front.running_count(), "waiting": service.queued()}


@router.get("/metrics")
async def prometheus(service: Service):
    metrics = service.metrics
    metrics.queue_depth.set(service.queued())
    metrics.running.set(service.front.running_count())
    metrics.active_adapters.set(len(await service.front.adapters(include_draining=True)))  # host-cached adapters
    return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")
