"""Errors in OpenAI's shape, {"error": {"message", "type", "param", "code"}}, and the handlers that turn every
failure (ours, FastAPI's validation, Starlette's routing, anything unexpected) into that shape."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException


class ApiError(Exception):
    """A refusal the client should see: raised anywhere in a route, answered by the handler below."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param=None, code=None,
                 headers: dict | None = None):
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code
        self.headers = headers


class ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def error_response(status: int, message: str, type_: str, param=None, code=None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, headers=headers,
                        content={"error": {"message": message, "type": type_, "param": param, "code": code}})


def adapter_unloaded(adapter: str | None) -> ApiError:
    """The request's adapter went away between the model check and the engine taking the request."""
    return ApiError(404, f"model {adapter!r} was unloaded", "not_found_error", "model", "model_not_found")


def adapter_failed(adapter: str, error: Exception) -> ApiError:
    """The request's adapter could not be loaded: a broken or mismatched adapter (400, the message names the file
    and what is wrong), or a cache full of adapters in use (503, transient)."""
    from ..engine.adapters import AdapterCacheFull  # the engine's error types; imported where they are needed

    if isinstance(error, AdapterCacheFull):
        return ApiError(503, str(error), "server_error", "model", "adapter_cache_full", headers={"Retry-After": "1"})
    return ApiError(400, f"adapter {adapter!r} cannot be served: {error}", param="model", code="adapter_invalid")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http)
    app.add_exception_handler(Exception, _unexpected)


async def _api_error(request, error: ApiError):
    return error_response(error.status, error.message, error.type, error.param, error.code, error.headers)


async def _client_gone(request, error: ClientGone):
    return JSONResponse(status_code=499, content={})  # nobody reads it; nginx's code for "client closed"


async def _validation(request, error: RequestValidationError):
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body" and not _is_type_tag(part)]
    if first.get("type") == "json_invalid":
        return error_response(400, f"request body is not valid JSON: {first.get('msg')}",
                              "invalid_request_error", None, "invalid_json")
    param = ".".join(loc) or None
    message = f"{param}: {first.get('msg')}" if param else first.get("msg", "invalid request")
    return error_response(400, message, "invalid_request_error", param, first.get("type"))


async def _http(request, error: StarletteHTTPException):
    if error.status_code == 400 and error.detail == "There was an error parsing the body":
        # FastAPI's answer when json.loads fails with other than a JSONDecodeError (bad UTF-8, deep nesting)
        return error_response(400, "request body is not valid JSON (it must be UTF-8 JSON of modest depth)",
                              "invalid_request_error", None, "invalid_json")
    type_ = "not_found_error" if error.status_code == 404 else "invalid_request_error"
    return error_response(error.status_code, str(error.detail), type_)


async def _unexpected(request, error: Exception):
    return error_response(500, f"internal error: {type(error).__name__}", "server_error")


def _is_type_tag(part) -> bool:
    """Pydantic names the branch of a union in an error's location ("str", "list[str]", "function-after[...]");
    the API's ``param`` names only fields and indices."""
    return isinstance(part, str) and (part in {"str", "int", "float", "bool", "list", "dict", "none"}
                                      or "[" in part)
