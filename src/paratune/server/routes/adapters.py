"""/v1/adapters: list (paged; every adapter that exists, and where it is: on the device, in the host cache, or on
disk only), load at runtime (only from inside the adapter root) and unload (after the adapter's requests in
flight finish)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Query

from ...engine import AdapterError
from ..errors import ApiError
from ..generation import GenerationService, generation
from ..schemas import AdapterLoad
from .listing import listed, page

router = APIRouter()
Service = Annotated[GenerationService, Depends(generation)]


@router.get("/v1/adapters")
async def list_adapters(service: Service, limit: Annotated[int | None, Query()] = None, after: str | None = None,
                        resident: bool | None = None):
    """``limit`` (default 100), ``after`` (the last id of the previous page); ``resident=true``: only those in
    memory (device or host), ``false``: only those on disk."""
    front = service.front
    names = front.available()
    if resident is not None:
        names = [n for n in names if (front.tier(n) is not None) == resident]
    chosen, more = page(names, limit, after, default=100)
    data = []
    for name in chosen:
        try:
            kind = front.kind(name)
        except (AdapterError, KeyError):
            kind = None  # a broken or just-removed folder: listed, its requests get the reason
        data.append({"id": name, "object": "adapter", "type": kind, "resident": front.tier(name)})
    return listed(data, more)


@router.post("/v1/adapters")
async def load_adapter(body: AdapterLoad, service: Service):
    if body.name == service.config.model_name or service.front.store.catalog.path(body.name) is not None:
        raise ApiError(409, f"an adapter or model named {body.name!r} already exists", param="name")
    path = safe_adapter_path(service.config.adapter_root, body.path)
    try:
        kind = await service.front.add_adapter(body.name, path)
    except AdapterError as error:
        raise ApiError(400, str(error), param="path") from None
    except ValueError as error:  # added by a concurrent request meanwhile
        raise ApiError(409, str(error), param="name") from None
    return {"id": body.name, "object": "adapter", "type": kind}


@router.delete("/v1/adapters/{name}")
async def unload_adapter(name: str, service: Service):
    if not service.front.exists(name):  # unknown, or already being unloaded
        raise ApiError(404, f"no adapter named {name!r}", "not_found_error", "name")
    await service.front.remove_adapter(name)
    return {"id": name, "object": "adapter", "deleted": True}


def safe_adapter_path(root: Path | None, path: str) -> Path:
    """``path`` (relative to the adapter root) resolved, symlinks included, and checked to stay inside it: a
    client names folders the operator put there, never arbitrary files of the machine."""
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
