"""A staged upload to S3 that sends its parts while the pack is still being written.

The bytes go to a local staging file (the Upload contract, catalog.objectstore). Once the file
passes ``part_size`` bytes the object is known to need a multipart upload: it is begun, and
every full part is sent by a pool of ``threads`` while the writer goes on, so uploading
overlaps hashing and compressing instead of following it. At most ``threads`` parts are in
flight (the writer waits for the oldest beyond that: memory stays at ``threads`` parts).
``commit`` sends the rest as the last part and completes the upload with
``If-None-Match: *``; a smaller object is one PUT with ``If-None-Match: *``. Any failure
aborts the multipart upload; until ``commit`` returns nothing is visible under the key.

Thread safety: one thread at a time writes, commits or aborts (the pack writer's I/O thread).
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

from botocore.exceptions import ClientError

from vmaccel.catalog.durable import create_private_file
from vmaccel.catalog.s3client import s3_errors

if TYPE_CHECKING:
    from vmaccel.catalog.s3store import S3ObjectStore

logger = logging.getLogger(__name__)


def _private_opener(path: str, flags: int) -> int:
    """``open()``'s opener for a staging file: created 0600, never an existing one."""
    return create_private_file(Path(path))


class PartStream:
    """The upload's ``stream``: a binary file that hands full parts to the upload."""

    def __init__(self, path: Path, full: Callable[[int], None]) -> None:
        self.name = str(path)  # for the CLI's error messages, like a file's
        self._file = open(path, "wb", opener=_private_opener)  # noqa: SIM115
        self._full, self.size = full, 0

    def write(self, data: bytes) -> int:
        n = self._file.write(data)
        self.size += n
        self._full(self.size)
        return n

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()

    @property
    def closed(self) -> bool:
        return self._file.closed


class S3Upload:
    """One staged upload of ``key`` to ``store`` through the local file ``staging`` (see
    the module docstring and :class:`~vmaccel.catalog.objectstore.Upload`)."""

    def __init__(self, store: S3ObjectStore, key: str, staging: Path, threads: int) -> None:
        self.key, self.path = key, str(staging)
        self._store, self._client = store, store.client
        self._bucket, self._name = store.where.bucket, store.object_name(key)
        self._staging, self._part, self._threads = staging, store.part_size, threads
        self._upload: str | None = None
        self._checksum: str | None = None  # the parts' checksum algorithm (Object Lock)
        self._until = 0.0  # the retain-until date sent (Object Lock), UNIX seconds
        self._sent = 0  # parts handed to the pool
        self._parts: deque[Future[dict[str, Any]]] = deque()
        self._done: list[dict[str, Any]] = []
        self._pool = ThreadPoolExecutor(threads, "vmaccel-s3-part")  # threads start on use
        self._fd = -1
        # Only write, flush and close are used of an upload's stream (the pack writer's).
        self.stream = cast(BinaryIO, PartStream(staging, self._maybe_send))
        self._size = cast(PartStream, self.stream)

    def _maybe_send(self, size: int) -> None:
        """Send every full part once the object is bigger than one part."""
        if size <= self._part:
            return
        with s3_errors(self._store.where, self.key):
            while (self._sent + 1) * self._part <= size:
                self._send(self._sent + 1, self._part)
            while len(self._parts) > self._threads or (self._parts and self._parts[0].done()):
                self._done.append(self._parts.popleft().result())  # a failed part, early

    def _send(self, number: int, length: int) -> None:
        if self._upload is None:
            args, self._until = self._store.lock_args()
            self._checksum = args.get("ChecksumAlgorithm")
            got = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._name, **args)
            self._upload = str(got["UploadId"])
            self._fd = os.open(self._staging, os.O_RDONLY | os.O_CLOEXEC)
        if not self._size.closed:
            self.stream.flush()  # the part's bytes are read back from the file
        self._parts.append(self._pool.submit(self._put_part, number, length))
        self._sent = number

    def _put_part(self, number: int, length: int) -> dict[str, Any]:
        body = os.pread(self._fd, length, (number - 1) * self._part)
        extra = {"ChecksumAlgorithm": self._checksum} if self._checksum else {}
        got = self._client.upload_part(
            Bucket=self._bucket, Key=self._name, UploadId=self._upload, PartNumber=number,
            Body=body, **extra,
        )  # fmt: skip
        part = {"PartNumber": number, "ETag": got["ETag"]}
        if self._checksum:  # a multipart upload begun with a checksum completes with them
            part[f"Checksum{self._checksum}"] = got[f"Checksum{self._checksum}"]
        return part

    def commit(self) -> None:
        self.stream.close()
        with s3_errors(self._store.where, self.key):
            if self._upload is None:
                args, self._until = self._store.lock_args()
                with open(self._staging, "rb") as f:
                    self._client.put_object(Bucket=self._bucket, Key=self._name, Body=f,
                                            IfNoneMatch="*", **args)  # fmt: skip
            else:
                self._complete()
        self._store.written(self.key, self._until)
        self._staging.unlink(missing_ok=True)

    def _complete(self) -> None:
        size = self._size.size
        try:
            if size > self._sent * self._part:
                self._send(self._sent + 1, size - self._sent * self._part)
            while self._parts:
                self._done.append(self._parts.popleft().result())
            self._client.complete_multipart_upload(
                Bucket=self._bucket, Key=self._name, UploadId=self._upload, IfNoneMatch="*",
                MultipartUpload={"Parts": sorted(self._done, key=lambda p: p["PartNumber"])},
            )  # fmt: skip
            self._upload = None
        except BaseException:
            self._abort_upload()
            raise
        finally:
            self._release()

    def abort(self) -> None:
        """Discard everything (idempotent, also after a failed commit)."""
        try:
            self.stream.close()
        except OSError:
            pass  # the bytes are being thrown away; removing the file is what matters
        finally:
            self._abort_upload()
            self._release()
            self._staging.unlink(missing_ok=True)

    def _abort_upload(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        if self._upload is not None:
            try:
                self._client.abort_multipart_upload(
                    Bucket=self._bucket, Key=self._name, UploadId=self._upload
                )
            except ClientError as exc:  # gc aborts what is left (it is staged garbage)
                logger.warning("cannot abort the multipart upload of %s: %s", self.key, exc)
            self._upload = None

    def _release(self) -> None:
        self._pool.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
