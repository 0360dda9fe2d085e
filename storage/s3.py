"""Amazon S3 (and S3-compatible) blob storage on aioboto3: no call blocks the event loop.

Credentials come only from the standard AWS chain (environment, shared config/profile,
web identity, container or instance role): nothing secret goes in `STORAGE_URL`.
One aioboto3 client is opened on first use and reused until `close()`.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import aioboto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from ._url import expiry_from, query_params
from .base import (
    DEFAULT_URL_EXPIRY_SECONDS,
    MAX_KEY_BYTES,
    BlobStorage,
    InvalidObjectKey,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StoredObject,
)
from .content_types import Delivery

_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_DENIED_CODES = {
    "AccessDenied",
    "403",
    "Forbidden",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "AllAccessDisabled",
}
# Another conditional write to the same key is in flight; AWS asks the caller to retry.
_CONDITIONAL_CONFLICT = "ConditionalRequestConflict"
_CONFLICT_RETRIES = 5


class S3Storage(BlobStorage):
    """Objects under `s3://bucket/prefix/`; read URLs are SigV4 presigned GETs."""

    signs_urls = True
    #: Keys per DeleteObjects call; 1000 is the S3 maximum.
    delete_batch_size = 1000

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        region_name: str | None = None,
        endpoint_url: str | None = None,
        addressing_style: str | None = None,
        url_expiry_seconds: int = DEFAULT_URL_EXPIRY_SECONDS,
        session: aioboto3.Session | None = None,
    ):
        super().__init__(url_expiry_seconds=url_expiry_seconds)
        if not bucket:
            raise ValueError("S3Storage needs a bucket name")
        self.bucket = bucket
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self.region_name = region_name
        self.endpoint_url = endpoint_url
        s3_config: dict[str, Any] = {}
        if addressing_style:
            s3_config["addressing_style"] = addressing_style
        # SigV4 everywhere: presigned URLs must be valid in every region (SigV2 is not).
        self._config = Config(signature_version="s3v4", s3=s3_config or None)
        self._session = session or aioboto3.Session(region_name=region_name)
        self._stack: AsyncExitStack | None = None
        self._client = None
        self._client_lock = asyncio.Lock()

    def __repr__(self) -> str:
        return (
            f"S3Storage(bucket={self.bucket!r}, prefix={self.prefix!r}, "
            f"region_name={self.region_name!r}, endpoint_url={self.endpoint_url!r})"
        )

    @classmethod
    def from_url(cls, url: str, *, data_dir: Path | None = None, secret: bytes | None = None) -> S3Storage:
        """`s3://bucket/prefix?region=eu-west-1&endpoint_url=http://...&addressing_style=path
        &expiry=SECONDS`. data_dir and secret are unused: S3 signs its own URLs."""
        parts = urlsplit(url)
        if parts.scheme != "s3" or not parts.hostname:
            raise ValueError(f"expected s3://bucket[/prefix], got {url!r}")
        params = query_params(url)
        return cls(
            parts.netloc,
            unquote(parts.path),
            region_name=params.get("region") or params.get("region_name"),
            endpoint_url=params.get("endpoint_url"),
            addressing_style=params.get("addressing_style"),
            url_expiry_seconds=expiry_from(params),
        )

    # ---- client --------------------------------------------------------------------
    async def _s3(self):
        if self._client is None:
            async with self._client_lock:
                if self._client is None:
                    stack = AsyncExitStack()
                    self._client = await stack.enter_async_context(
                        self._session.client(
                            "s3",
                            region_name=self.region_name,
                            endpoint_url=self.endpoint_url,
                            config=self._config,
                        )
                    )
                    self._stack = stack
        return self._client

    async def _close(self):
        stack, self._stack, self._client = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    def _full_key(self, key: str) -> str:
        full = self.prefix + key
        if len(full.encode("utf-8")) > MAX_KEY_BYTES:
            raise InvalidObjectKey(f"object key with prefix {self.prefix!r} is longer than {MAX_KEY_BYTES} bytes")
        return full

    def _translate(self, exc: Exception, action: str, key: str | None) -> StorageError:
        """One place where botocore's errors become the storage's typed errors."""
        where = f"s3://{self.bucket}/{self.prefix}{key or ''}"
        if isinstance(exc, NoCredentialsError):
            return StorageAccessDenied(f"{action} {where}: no AWS credentials found in the standard chain")
        if isinstance(exc, ClientError):
            error = exc.response.get("Error", {})
            code = str(error.get("Code", ""))
            message = error.get("Message") or code
            if code in _NOT_FOUND_CODES:
                return ObjectNotFound(f"no such object: {key}")
            if code in _DENIED_CODES:
                return StorageAccessDenied(f"{action} {where} denied: {message}")
            if code == "NoSuchBucket":
                return StorageError(f"{action} {where}: bucket {self.bucket!r} does not exist")
            return StorageError(f"{action} {where} failed: {code}: {message}")
        return StorageError(f"{action} {where} failed: {exc}")

    # ---- backend hooks ---------------------------------------------------------------
    async def _upload(self, key, body, mime, overwrite, disposition):
        full = self._full_key(key)
        params: dict[str, Any] = {
            "Bucket": self.bucket,
            "Key": full,
            "Body": body,
            "ContentType": mime,
            "ContentDisposition": disposition,
        }
        if not overwrite:
            # A conditional PUT: S3 itself refuses if the key exists, so two racing
            # uploads cannot both win (a HEAD-then-PUT check could).
            params["IfNoneMatch"] = "*"
        client = await self._s3()
        self.logger.debug("put s3://%s/%s (%d bytes)", self.bucket, full, len(body))
        for attempt in range(_CONFLICT_RETRIES):
            try:
                await client.put_object(**params)
                return
            except ClientError as exc:
                code = str(exc.response.get("Error", {}).get("Code", ""))
                if not overwrite and code in ("PreconditionFailed", "412"):
                    raise ObjectExists(f"object already exists: {key}") from exc
                if not overwrite and code == _CONDITIONAL_CONFLICT and attempt < _CONFLICT_RETRIES - 1:
                    await asyncio.sleep(0.05 * 2**attempt)
                    continue
                raise self._translate(exc, "put", key) from exc
            except BotoCoreError as exc:
                raise self._translate(exc, "put", key) from exc

    async def _read(self, key):
        full = self._full_key(key)
        client = await self._s3()
        try:
            response = await client.get_object(Bucket=self.bucket, Key=full)
            async with response["Body"] as stream:
                return await stream.read()
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "get", key) from exc

    async def _delete(self, key):
        full = self._full_key(key)
        client = await self._s3()
        try:
            # DeleteObject succeeds for a missing key: idempotent as the contract wants.
            await client.delete_object(Bucket=self.bucket, Key=full)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "delete", key) from exc

    async def _delete_many(self, keys):
        full_keys = [self._full_key(key) for key in dict.fromkeys(keys)]
        client = await self._s3()
        for start in range(0, len(full_keys), self.delete_batch_size):
            chunk = full_keys[start : start + self.delete_batch_size]
            try:
                response = await client.delete_objects(
                    Bucket=self.bucket,
                    Delete={"Objects": [{"Key": k} for k in chunk], "Quiet": True},
                )
            except (ClientError, BotoCoreError) as exc:
                raise self._translate(exc, "delete batch", chunk[0]) from exc
            # DeleteObjects answers 200 even when some keys failed: the failures are only
            # in `Errors`, and ignoring them would leave a deleted thread's files behind.
            errors = [e for e in response.get("Errors", []) if e.get("Code") != "NoSuchKey"]
            if errors:
                denied = all(e.get("Code") == "AccessDenied" for e in errors)
                failed = ", ".join(f"{e.get('Key')}: {e.get('Code')}" for e in errors[:10])
                error_type = StorageAccessDenied if denied else StorageError
                raise error_type(f"could not delete {len(errors)} of {len(chunk)} objects ({failed})")

    async def _list(self, prefix):
        client = await self._s3()
        params: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix + prefix}
        while True:
            try:
                # ListObjectsV2, a page (at most 1000 keys) per request, in key order.
                page = await client.list_objects_v2(**params)
            except (ClientError, BotoCoreError) as exc:
                raise self._translate(exc, "list", prefix) from exc
            for entry in page.get("Contents", []):
                key = entry["Key"][len(self.prefix):]
                if key:
                    yield StoredObject(key, int(entry.get("Size", 0)), entry["LastModified"])
            if not page.get("IsTruncated"):
                return
            params["ContinuationToken"] = page["NextContinuationToken"]

    async def _read_url(self, key, served: Delivery):
        full = self._full_key(key)
        client = await self._s3()
        # The link itself names the response type and disposition (signed with it), so an
        # object stored with another type, by an older version or by hand, is still served
        # by the policy. S3 cannot add a CSP header: its responses come from the bucket's
        # own origin, never the app's.
        params = {
            "Bucket": self.bucket,
            "Key": full,
            "ResponseContentType": served.content_type,
            "ResponseContentDisposition": served.content_disposition,
        }
        try:
            return await client.generate_presigned_url("get_object", Params=params, ExpiresIn=self.url_expiry_seconds)
        except (ClientError, BotoCoreError) as exc:
            raise self._translate(exc, "presign", key) from exc
