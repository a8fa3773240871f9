"""A guest file streamed from its image: ``Content-Length``, single byte ranges, no buffering
of the whole file.

Ranges (RFC 9110 section 14): ``bytes=A-B``, ``bytes=A-`` and ``bytes=-N`` are answered
with 206 and ``Content-Range``; a range that starts at or beyond the end is 416 with
``Content-Range: bytes */SIZE``; several ranges, other units or malformed text are ignored
(the whole file, 200), as the RFC allows. The file stays open (and with it the repository,
for reading) until the last byte is sent or the client goes away.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from urllib.parse import quote

from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from vmaccel.service import guestfiles, guestzip
from vmaccel.service.context import Context

PIECE = 1 << 20  # bytes read from the image per step
_RANGE = re.compile(r"bytes=(\d*)-(\d*)")


class RangeNotSatisfiable(Exception):
    """The asked range starts at or beyond the end of the file."""


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``(first, last)`` byte positions (inclusive) that ``header`` asks of a file of
    ``size`` bytes, or None for the whole file. Raises :class:`RangeNotSatisfiable`."""
    if not header:
        return None
    match = _RANGE.fullmatch(header.strip())
    if match is None:
        return None
    first_text, last_text = match.groups()
    if not first_text and not last_text:
        return None
    if not first_text:  # the last N bytes
        n = int(last_text)
        if n == 0:
            raise RangeNotSatisfiable
        return max(size - n, 0), size - 1
    first = int(first_text)
    last = int(last_text) if last_text else size - 1
    if last_text and last < first:
        return None  # malformed: ignored
    if first >= size:
        raise RangeNotSatisfiable
    return first, min(last, size - 1)


def stream_guest_file(
    ctx: Context, backup: str, path: str, range_header: str | None
) -> StreamingResponse:
    """The response for a download of ``path`` of ``backup``. Service errors (not found,
    not a regular file) raise before anything is sent."""
    stack = contextlib.ExitStack()
    opened = stack.enter_context(guestfiles.open_guest_file(ctx, backup, path))
    try:
        size = opened.size
        span = parse_range(range_header, size)
    except RangeNotSatisfiable:
        stack.close()
        return StreamingResponse(
            iter(()), status_code=416, headers={"Content-Range": f"bytes */{size}"}
        )
    except BaseException:
        stack.close()
        raise
    first, last = span if span is not None else (0, size - 1)
    headers = {
        "Accept-Ranges": "bytes",
        "Content-Length": str(last - first + 1 if size else 0),
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(opened.entry.name)}",
    }
    if span is not None:
        headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    body = _pieces(stack, opened, first, last + 1)
    return StreamingResponse(
        body,
        status_code=206 if span is not None else 200,
        media_type="application/octet-stream",
        headers=headers,
        background=BackgroundTask(stack.close),  # also when the client went away early
    )


def _pieces(
    stack: contextlib.ExitStack, opened: guestfiles.OpenGuestFile, start: int, end: int
) -> Iterator[bytes]:
    """Bytes [start, end) in pieces; closes the file (and the repository) when done or
    dropped. A file that reads short (damage found on the way) ends the body early: the
    client sees fewer bytes than Content-Length, never wrong ones."""
    with stack:
        buf = bytearray(PIECE)
        view = memoryview(buf)
        pos = start
        while pos < end:
            want = min(PIECE, end - pos)
            got = opened.read_into(pos, view[:want])
            if got <= 0:
                return
            yield bytes(view[:got])
            pos += got


def stream_guest_zip(ctx: Context, backup: str, path: str, compress: bool) -> StreamingResponse:
    """The response for a folder of ``backup`` as a zip archive (chunked: its length is
    known only at the end). Service errors (not found, not a folder) raise before anything
    is sent; a file that cannot be read later ends the body early (a truncated archive)."""
    stack = contextlib.ExitStack()
    folder = stack.enter_context(guestzip.open_guest_folder(ctx, backup, path))
    headers = {
        "Content-Disposition": f"attachment; filename*=UTF-8''{quote(folder.filename)}",
        "X-Content-Type-Options": "nosniff",
    }

    def body() -> Iterator[bytes]:
        with stack:
            for piece in guestzip.zip_pieces(folder, compress):
                if piece:
                    yield piece

    return StreamingResponse(
        body(),
        media_type="application/zip",
        headers=headers,
        background=BackgroundTask(stack.close),  # also when the client went away early
    )
