"""/v1/models: the base model, then each adapter that accepts requests (one being unloaded is not listed), in memory
or not. Every adapter by default (OpenAI's clients do not page this list); ``limit`` and ``after`` page it."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from ...engine import AdapterError
from ..generation import GenerationService, generation
from .listing import check_limit, listed, page

router = APIRouter()


@router.get("/v1/models")
async def models(service: Annotated[GenerationService, Depends(generation)], limit: int | None = None,
                 after: str | None = None):
    now, base, front = int(time.time()), service.config.model_name, service.front
    names = front.available()
    check_limit(limit)
    room = None if limit is None else (limit - 1 if after is None else limit)  # the first page opens with the base
    chosen, more = ([], bool(names)) if room == 0 else page(names, room, after, default=None)
    data = [{"id": base, "object": "model", "created": now, "owned_by": "paratune"}] if after is None else []
    for name in chosen:
        try:
            kind = front.kind(name)
        except (AdapterError, KeyError):
            kind = None
        data.append({"id": name, "object": "model", "created": now, "owned_by": "paratune", "parent": base,
                     "adapter_type": kind, "resident": front.tier(name)})
    return listed(data, more)
