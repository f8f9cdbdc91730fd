"""/v1/models: the base model, then each adapter that accepts requests (one being unloaded is not listed)."""

from __future__ import annotations

import time
from typing import Annotated

from fastapi import APIRouter, Depends

from ..generation import GenerationService, generation

router = APIRouter()


@router.get("/v1/models")
async def models(service: Annotated[GenerationService, Depends(generation)]):
    now, base = int(time.time()), service.config.model_name
    data = [{"id": base, "object": "model", "created": now, "owned_by": "paratune"}]
    data += [{"id": name, "object": "model", "created": now, "owned_by": "paratune", "parent": base,
              "adapter_type": kind} for name, kind in sorted((await service.front.adapters()).items())]
    return {"object": "list", "data": data}
