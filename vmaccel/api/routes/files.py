"""Guest files: browse a backup's file tree, download a file (ranges), search the file
catalog, compare restore points, a path's history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query
from fastapi.responses import StreamingResponse

from vmaccel.api.auth import Ctx, ReadCaller
from vmaccel.api.download import stream_guest_file, stream_guest_zip
from vmaccel.api.jsonbody import DocRoute
from vmaccel.service import browse, guestfiles
from vmaccel.service import files as files_service

router = APIRouter(tags=["files"], route_class=DocRoute)

GuestPath = Annotated[
    str,
    Query(
        description="<volume>/<path> as under a mount's files/ (p1/etc/hosts); the volume may "
        "be left out when one volume holds the path; empty: the volumes.",
        max_length=4096,
    ),
]


@router.get("/backups/{ref}/files", summary="List a directory of a backup's guest files")
def browse_files(
    ref: str,
    ctx: Ctx,
    _: ReadCaller,
    path: GuestPath = "",
    offset: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any]:
    """What ``path`` is (``entry``) and, for a directory, a page of its entries by name
    (``total`` counts them all). Symlinks are shown, never followed."""
    found = guestfiles.list_guest_dir(ctx, ref, path)
    doc = found.to_dict()
    doc["total"] = len(found.entries)
    doc["offset"], doc["limit"] = offset, limit
    doc["entries"] = doc["entries"][offset : offset + limit]
    return doc


@router.get(
    "/backups/{ref}/download",
    summary="Download one guest file (streamed; Range supported)",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"application/octet-stream": {}}, "description": "The file."},
        206: {"content": {"application/octet-stream": {}}, "description": "A byte range."},
        416: {"description": "The range starts beyond the end of the file."},
    },
)
def download_file(
    ref: str,
    path: GuestPath,
    ctx: Ctx,
    _: ReadCaller,
    range_: Annotated[str | None, Header(alias="Range")] = None,
) -> StreamingResponse:
    return stream_guest_file(ctx, ref, path, range_)


@router.get(
    "/backups/{ref}/zip",
    summary="Download a guest folder as a zip archive (streamed)",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/zip": {}}, "description": "The archive."}},
)
def download_folder(
    ref: str,
    path: GuestPath,
    ctx: Ctx,
    _: ReadCaller,
    compress: Annotated[bool, Query(description="Deflate files; false: store them.")] = True,
) -> StreamingResponse:
    """Every file, folder and safe symlink below ``path`` under one top folder; unsafe
    names, escaping symlinks and device nodes are left out and listed in the archive's
    comment. ZIP64 where sizes need it; nothing is held in memory."""
    return stream_guest_zip(ctx, ref, path, compress)


@router.get("/files/search", summary="Search the file catalog of every backup")
def search_files(
    pattern: Annotated[str, Query(description="Glob: nginx.conf, /etc/*.conf, *.log.")],
    ctx: Ctx,
    _: ReadCaller,
    vm: str | None = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> list[dict[str, Any]]:
    return [h.to_dict() for h in browse.find_files(ctx, pattern, vm, limit)]


@router.get("/files/diff", summary="What changed between two restore points")
def diff_files(
    a: Annotated[str, Query(description="The older backup (any reference).")],
    ctx: Ctx,
    _: ReadCaller,
    b: Annotated[str | None, Query(description="The newer one (default: after a).")] = None,
    vm: str | None = None,
    path: Annotated[str | None, Query(description="Only this directory and below.")] = None,
) -> dict[str, Any]:
    return files_service.diff_files(ctx, a, b, vm, path).to_dict()


@router.get("/files/history", summary="Where a path appeared, changed or disappeared")
def file_history(
    path: Annotated[str, Query(description="Absolute path within its volume: /etc/hosts.")],
    ctx: Ctx,
    _: ReadCaller,
    vm: str | None = None,
) -> dict[str, Any]:
    return files_service.file_history(ctx, path, vm).to_dict()
