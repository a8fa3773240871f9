"""How the API writes JSON: every answer is a service record's ``to_dict`` document,
written as ASCII JSON.

Guest names need not be UTF-8: the file catalog and the guest filesystems keep such names
with ``surrogateescape`` (as ``--json`` of the CLI does, which writes them ``\\udcXX``).
UTF-8 cannot encode those, so a UTF-8 JSON writer (FastAPI's and Starlette's) would fail the
whole answer; escaping every non-ASCII character keeps each document writable and the same
as the CLI's. Endpoints return plain documents, which :class:`DocRoute` hands to
:class:`AsciiJSONResponse` as they are (no response model re-validates them).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi.datastructures import DefaultPlaceholder
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute


class AsciiJSONResponse(JSONResponse):
    """JSON with every non-ASCII character escaped (see the module docstring)."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        return text.encode("ascii")


class DocRoute(APIRoute):
    """A route whose endpoint returns a JSON document (or a response): its return type
    annotation documents it but is not used to re-serialise it."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        if isinstance(kwargs.get("response_model"), DefaultPlaceholder):
            kwargs["response_model"] = None
        super().__init__(path, endpoint, **kwargs)
