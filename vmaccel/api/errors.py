"""Errors as JSON: the one place where the API turns exceptions into responses.

Every error response is ``{"error": {"status": int, "type": str, "message": str}}`` (plus
``"details"`` for a request that fails validation), so a client (the console) needs one
code path. A :class:`~vmaccel.vocabulary.errors.VmaccelError` answers with its
:func:`~vmaccel.vocabulary.errors.http_status`; an ``OSError`` no layer foresaw becomes a
:class:`~vmaccel.vocabulary.errors.LocalIOError` (507 when a filesystem is full). Messages
are the service's own (they name no CLI flag) and never hold a token.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from vmaccel.api.jsonbody import AsciiJSONResponse
from vmaccel.vocabulary.errors import LocalIOError, VmaccelError, http_status

logger = logging.getLogger(__name__)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["status", "type", "message"],
            "properties": {
                "status": {"type": "integer"},
                "type": {"type": "string"},
                "message": {"type": "string"},
                "details": {"type": "array", "items": {"type": "object"}},
            },
        }
    },
}
"""The JSON schema of every error body (for the OpenAPI document)."""


def error_response(
    status: int, kind: str, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": {"status": status, "type": kind, "message": message, **extra}}
    return AsciiJSONResponse(body, status_code=status, headers=headers)


def _vmaccel_error(request: Request, exc: Exception) -> JSONResponse:
    err = cast(VmaccelError, exc)
    status = http_status(err)
    if status >= 500:
        logger.warning("%s %s failed: %s", request.method, request.url.path, err)
    return error_response(status, type(err).__name__, str(err))


def _os_error(request: Request, exc: Exception) -> JSONResponse:
    err = LocalIOError.from_os_error(
        cast(OSError, exc), f"answering {request.method} {request.url.path}"
    )
    return _vmaccel_error(request, err)


def _http_error(request: Request, exc: Exception) -> JSONResponse:
    http = cast(StarletteHTTPException, exc)
    kind = {401: "Unauthorized", 403: "Forbidden", 404: "NotFound", 405: "MethodNotAllowed"}
    return error_response(
        http.status_code,
        kind.get(http.status_code, "HTTPError"),
        str(http.detail),
        headers=dict(http.headers) if http.headers else None,
    )


def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    found = [
        ([str(p) for p in e.get("loc", ())], str(e.get("msg", "")))
        for e in cast(RequestValidationError, exc).errors()
    ]
    loc, msg = found[0] if found else ([], "invalid request")
    message = f"{'.'.join(loc)}: {msg}" if loc else msg
    details = [{"loc": where, "msg": text} for where, text in found]
    return error_response(422, "ValidationError", message, details=details)


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(VmaccelError, _vmaccel_error)
    app.add_exception_handler(OSError, _os_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
