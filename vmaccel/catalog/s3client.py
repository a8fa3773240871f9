"""The S3 client of an S3 repository: where it points, how it retries, how its errors read.

Credentials are never vmaccel's: boto3's usual chain finds them (``AWS_ACCESS_KEY_ID`` /
``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE`` and the shared config files, instance roles).

Retries: botocore's ``standard`` mode (``MAX_ATTEMPTS`` attempts, exponential backoff with
jitter) covers throttling (``SlowDown``, 503) and 5xx answers and dropped connections.
Response checksums are validated only ``when_required``: some servers send a whole-object
CRC on a ranged GET, which botocore's default would reject; every chunk carries its own
checksum anyway (DESIGN invariant 6). For the same reason bodies are sent as
``UNSIGNED-PAYLOAD`` (``payload_signing_enabled`` off) and request checksums only
``when_required``: botocore would otherwise hash every pack twice more (SHA-256 for the
signature over http, CRC32) on the backup's CPU; the headers stay signed.

Errors map onto the error tree once, here (:func:`s3_errors`): a missing key is
:class:`~vmaccel.catalog.objectstore.ObjectMissing`, a failed ``If-None-Match`` is
:class:`~vmaccel.catalog.objectstore.ObjectExists`, refused credentials
:class:`~vmaccel.catalog.objectstore.ObjectStoreDenied`, an unreachable endpoint
:class:`~vmaccel.catalog.objectstore.ObjectStoreUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vmaccel.catalog.objectstore import (
    ObjectExists,
    ObjectMissing,
    ObjectStoreDenied,
    ObjectStoreUnavailable,
)
from vmaccel.vocabulary.errors import RepositoryError, RepositoryNotFound, UsageError

if TYPE_CHECKING:  # boto3 and botocore load when an S3 store is first used (~0.3 s, ~7 MiB)
    from botocore.exceptions import ClientError

MAX_ATTEMPTS = 5
MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchVersion"}
DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403",
          "ExpiredToken", "InvalidToken", "AllAccessDisabled"}  # fmt: skip
EXISTS = {"PreconditionFailed", "412"}
PART_SIZE = 16 * 1024 * 1024  # bytes per multipart part (and the single-PUT limit)


@dataclass(frozen=True)
class S3Location:
    """A repository's place in object storage: ``bucket``, ``prefix`` ("" or ending in
    ``/``), the ``endpoint`` URL and the ``region``."""

    bucket: str
    prefix: str
    endpoint: str
    region: str = "us-east-1"

    @classmethod
    def parse(cls, url: str, endpoint: str, region: str = "us-east-1") -> S3Location:
        """From ``s3://BUCKET[/PREFIX]`` and the endpoint URL."""
        if not url.startswith("s3://"):
            raise UsageError(f"store {url!r} is not an s3://BUCKET/PREFIX URL")
        bucket, _, prefix = url[5:].partition("/")
        prefix = prefix.strip("/")
        if not 3 <= len(bucket) <= 63 or any(p.startswith(".") for p in prefix.split("/") if p):
            raise UsageError(f"store {url!r}: invalid bucket name or prefix")
        if not endpoint.startswith(("http://", "https://")):
            raise UsageError(f"endpoint {endpoint!r} is not an http(s):// URL")
        return cls(bucket, f"{prefix}/" if prefix else "", endpoint.rstrip("/"), region)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}".rstrip("/")

    def describe(self) -> str:
        return f"{self.url} at {self.endpoint}"


def make_client(where: S3Location, max_attempts: int = MAX_ATTEMPTS) -> Any:
    """A thread-safe boto3 S3 client for ``where`` (see the module docstring)."""
    import boto3
    from botocore.config import Config

    config = Config(
        region_name=where.region,
        retries={"mode": "standard", "max_attempts": max_attempts},
        response_checksum_validation="when_required",
        request_checksum_calculation="when_required",
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=32,
        s3={"addressing_style": "path", "payload_signing_enabled": False},
    )
    return boto3.session.Session().client("s3", endpoint_url=where.endpoint, config=config)


def error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


@contextmanager
def s3_errors(where: S3Location, key: str = "") -> Iterator[None]:
    """Map boto errors of a request on ``key`` (for messages) onto the error tree."""
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError, ReadTimeoutError
    from botocore.exceptions import ConnectionError as BotoConnectionError

    name = f"{where.url}/{key}" if key else where.url
    try:
        yield
    except ClientError as exc:
        code = error_code(exc)
        if code in MISSING:
            raise ObjectMissing(f"{key} is missing from {where.url}") from None
        if code in EXISTS:
            raise ObjectExists(f"object {key} exists already; it is never overwritten") from None
        if code == "NoSuchBucket":
            raise RepositoryNotFound(
                f"bucket {where.bucket} does not exist at {where.endpoint}; create it first"
            ) from None
        if code in DENIED:
            raise ObjectStoreDenied(
                f"{where.endpoint} refused the request on {name} ({code}): check "
                "the AWS credentials (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY or AWS_PROFILE) "
                "and their permissions"
            ) from None
        raise RepositoryError(f"object store error on {name}: {exc}") from exc
    except NoCredentialsError:
        raise ObjectStoreDenied(
            f"no AWS credentials for {where.describe()}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        ) from None
    except (BotoConnectionError, ReadTimeoutError) as exc:
        raise ObjectStoreUnavailable(
            f"cannot reach the object store {where.endpoint} ({type(exc).__name__}); "
            "check the endpoint URL and the network"
        ) from None
    except BotoCoreError as exc:
        raise RepositoryError(f"object store error on {name}: {exc}") from exc
