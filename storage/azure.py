"""Azure Data Lake Storage Gen2 blob storage on `azure.storage.filedatalake.aio`.

Credentials: an account key (argument, `account_key=` in the URL, or `AZURE_STORAGE_KEY`),
or Azure AD through `DefaultAzureCredential` when no key is given (managed identity,
workload identity, environment, Azure CLI...). Read URLs carry a read-only SAS: signed with
the account key, or with a user-delegation key fetched with the AD credential (cached and
renewed before it expires).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from azure.core import MatchConditions
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.storage.filedatalake import ContentSettings, FileSasPermissions, generate_file_sas
from azure.storage.filedatalake.aio import DataLakeServiceClient

from ._url import expiry_from, query_params
from .base import (
    DEFAULT_URL_EXPIRY_SECONDS,
    BlobStorage,
    ObjectExists,
    ObjectNotFound,
    StorageAccessDenied,
    StorageError,
    StoredObject,
)
from .content_types import Delivery

# A user-delegation key may live 7 days; one is fetched per day and reused for every URL.
_DELEGATION_KEY_LIFETIME = dt.timedelta(days=1)
# SAS validity starts a little in the past: the storage service's clock may be behind ours.
_CLOCK_SKEW = dt.timedelta(minutes=5)
# Bytes per append request (the service accepts up to 100 MiB on every API version).
_MAX_APPEND = 64 * 1024 * 1024
# Concurrent deletes when removing many files (a thread's attachments).
_DELETE_CONCURRENCY = 16
# overwrite=True uploads that lost a race with another writer are retried this many times.
_OVERWRITE_RETRIES = 3


class AzureDataLakeStorage(BlobStorage):
    """Objects under `{file_system}/{prefix}/` of an ADLS Gen2 account."""

    signs_urls = True

    def __init__(
        self,
        account_url: str,
        file_system: str,
        prefix: str = "",
        *,
        credential: Any = None,
        url_expiry_seconds: int = DEFAULT_URL_EXPIRY_SECONDS,
    ):
        super().__init__(url_expiry_seconds=url_expiry_seconds)
        if not file_system:
            raise ValueError("AzureDataLakeStorage needs a file system (container) name")
        self.account_url = account_url.rstrip("/")
        self.file_system = file_system
        self.prefix = f"{prefix.strip('/')}/" if prefix.strip("/") else ""
        self._owned_credential = None
        self._account_key: str | None = None
        if credential is None:
            from azure.identity.aio import DefaultAzureCredential

            credential = self._owned_credential = DefaultAzureCredential()
        elif isinstance(credential, str):
            self._account_key = credential
        self._service = DataLakeServiceClient(self.account_url, credential=credential)
        # The SDK works the account name out of the URL, including the emulator form
        # `http://127.0.0.1:PORT/account`; a key given as a plain string relies on that too.
        self.account_name = self._service.account_name
        self._fs = self._service.get_file_system_client(file_system)
        self._delegation_key: Any = None
        self._delegation_key_expiry: dt.datetime | None = None
        self._delegation_lock = asyncio.Lock()

    def __repr__(self) -> str:
        # Never the credential: an account key opens the whole storage account.
        return (
            f"AzureDataLakeStorage(account_url={self.account_url!r}, "
            f"file_system={self.file_system!r}, prefix={self.prefix!r})"
        )

    @classmethod
    def from_url(
        cls, url: str, *, data_dir: Path | None = None, secret: bytes | None = None
    ) -> AzureDataLakeStorage:
        """`abfs[s]://container@account.dfs.core.windows.net/prefix`, or for emulators and
        tests `abfs://container@account/prefix?endpoint_url=http://127.0.0.1:PORT/account`.

        The account key comes from `AZURE_STORAGE_KEY` (preferred) or `?account_key=`;
        without either, DefaultAzureCredential is used. Also `?expiry=SECONDS`."""
        parts = urlsplit(url)
        if parts.scheme not in ("abfs", "abfss") or "@" not in parts.netloc:
            raise ValueError("expected abfs://container@account.dfs.core.windows.net/prefix")
        container, _, host = parts.netloc.rpartition("@")
        params = query_params(url)
        endpoint = params.get("endpoint_url")
        if endpoint:
            account_url = endpoint
        elif "." in host:
            account_url = f"https://{host}"
        else:
            account_url = f"https://{host}.dfs.core.windows.net"
        key = os.environ.get("AZURE_STORAGE_KEY") or params.get("account_key") or None
        if key:
            # A base64 key pasted unencoded into a URL has its '+' read as a space.
            key = key.replace(" ", "+")
        return cls(
            account_url,
            unquote(container),
            unquote(parts.path),
            credential=key,
            url_expiry_seconds=expiry_from(params),
        )

    # ---- helpers -------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return self.prefix + key

    def _translate(self, exc: Exception, action: str, key: str) -> StorageError:
        """One place where azure-core's errors become the storage's typed errors."""
        where = f"{self.file_system}/{self._path(key)}"
        if isinstance(exc, ResourceNotFoundError):
            code = getattr(exc, "error_code", None)
            if code in ("FilesystemNotFound", "ContainerNotFound"):
                return StorageError(f"{action} {where}: file system {self.file_system!r} does not exist")
            return ObjectNotFound(f"no such object: {key}")
        if isinstance(exc, ResourceExistsError):
            return ObjectExists(f"object already exists: {key}")
        if isinstance(exc, ClientAuthenticationError) or getattr(exc, "status_code", None) in (401, 403):
            return StorageAccessDenied(f"{action} {where} denied: {_reason(exc)}")
        return StorageError(f"{action} {where} failed: {_reason(exc)}")

    # ---- backend hooks ---------------------------------------------------------------
    async def _upload(self, key, body, mime, overwrite, disposition):
        client = self._fs.get_file_client(self._path(key))
        settings = ContentSettings(content_type=mime, content_disposition=disposition)
        self.logger.debug("upload %s/%s (%d bytes)", self.file_system, self._path(key), len(body))
        for attempt in range(_OVERWRITE_RETRIES):
            try:
                await self._create_append_flush(client, body, settings, overwrite)
                return
            except ResourceModifiedError as exc:
                # Another writer re-created the path between our create and our flush.
                if not overwrite:
                    raise ObjectExists(f"object already exists: {key}") from exc
                if attempt == _OVERWRITE_RETRIES - 1:
                    raise self._translate(exc, "upload", key) from exc
            except AzureError as exc:
                raise self._translate(exc, "upload", key) from exc

    async def _create_append_flush(self, client, body: bytes, settings: ContentSettings, overwrite: bool) -> None:
        """Write a file the way the DFS API does it, step by step.

        The SDK's `upload_data` is not used: it skips empty files entirely and, with
        overwrite=False, appends to a path it never created (the service answers 404)."""
        conditions: dict[str, Any] = {}
        if not overwrite:
            # `If-None-Match: *` on create: the service refuses (409) if the path exists,
            # atomically, so racing uploads have exactly one winner.
            conditions = {"match_condition": MatchConditions.IfMissing}
        created = await client.create_file(content_settings=settings, **conditions)
        for offset in range(0, len(body), _MAX_APPEND):
            chunk = body[offset : offset + _MAX_APPEND]
            await client.append_data(chunk, offset=offset, length=len(chunk))
        # Commit only if the path is still the one we created (If-Match on its ETag): a
        # concurrent re-create must not get our bytes flushed into it.
        await client.flush_data(
            len(body),
            content_settings=settings,
            etag=created["etag"],
            match_condition=MatchConditions.IfNotModified,
        )

    async def _read(self, key):
        client = self._fs.get_file_client(self._path(key))
        try:
            downloader = await client.download_file()
            return await downloader.readall()
        except AzureError as exc:
            raise self._translate(exc, "read", key) from exc

    async def _delete(self, key):
        client = self._fs.get_file_client(self._path(key))
        try:
            await client.delete_file()
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) in ("FilesystemNotFound", "ContainerNotFound"):
                raise self._translate(exc, "delete", key) from exc
            return  # already gone: deleting is idempotent by contract
        except AzureError as exc:
            raise self._translate(exc, "delete", key) from exc

    async def _delete_many(self, keys):
        # The DFS API has no batch delete of files: deletes run concurrently (bounded, so a
        # big thread does not open hundreds of connections), and no failure is dropped.
        unique = list(dict.fromkeys(keys))
        limit = asyncio.Semaphore(_DELETE_CONCURRENCY)

        async def delete(key: str) -> None:
            async with limit:
                await self._delete(key)

        results = await asyncio.gather(*(delete(k) for k in unique), return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if len(errors) == 1:
            raise errors[0]
        if errors:
            denied = all(isinstance(e, StorageAccessDenied) for e in errors)
            error_type = StorageAccessDenied if denied else StorageError
            raise error_type(f"{len(errors)} of {len(unique)} deletes failed; first: {errors[0]}") from errors[0]

    async def _list(self, prefix):
        # get_paths lists a directory (recursively, in pages the SDK follows): the deepest
        # folder that holds every key with this prefix; the base filters the rest out.
        folder = (self.prefix + prefix).rpartition("/")[0]
        try:
            async for path in self._fs.get_paths(path=folder or None, recursive=True):
                if path.is_directory:
                    continue
                key = str(path.name)[len(self.prefix):]
                if key:
                    yield StoredObject(key, int(path.content_length or 0), _aware(path.last_modified))
        except ResourceNotFoundError as exc:
            if getattr(exc, "error_code", None) in ("FilesystemNotFound", "ContainerNotFound"):
                raise self._translate(exc, "list", prefix) from exc
            return  # no such folder: nothing under this prefix
        except AzureError as exc:
            raise self._translate(exc, "list", prefix) from exc

    async def _read_url(self, key, served: Delivery):
        path = self._path(key)
        directory, _, file_name = path.rpartition("/")
        now = dt.datetime.now(dt.UTC)
        expiry = now + dt.timedelta(seconds=self.url_expiry_seconds)
        if self._account_key is not None:
            signing_key: Any = self._account_key
        else:
            signing_key = await self._user_delegation_key(now, expiry)
        sas = generate_file_sas(
            str(self.account_name),
            self.file_system,
            directory,
            file_name,
            credential=signing_key,
            permission=FileSasPermissions(read=True),
            expiry=expiry,
            start=now - _CLOCK_SKEW,
            # Signed into the SAS (rsct/rscd): the service answers with this type and
            # disposition whatever the file was stored with. The Blob endpoint is the
            # account's origin, never the app's, so no CSP is needed there.
            content_type=served.content_type,
            content_disposition=served.content_disposition,
        )
        return f"{_blob_endpoint(self._fs.get_file_client(path).url)}?{sas}"

    async def _user_delegation_key(self, now: dt.datetime, url_expiry: dt.datetime):
        """A user-delegation key valid past `url_expiry`, fetched once and reused."""
        async with self._delegation_lock:
            if self._delegation_key is None or self._delegation_key_expiry is None \
                    or self._delegation_key_expiry <= url_expiry:
                key_expiry = max(now + _DELEGATION_KEY_LIFETIME, url_expiry + dt.timedelta(minutes=1))
                try:
                    self._delegation_key = await self._service.get_user_delegation_key(
                        key_start_time=now - _CLOCK_SKEW, key_expiry_time=key_expiry
                    )
                except AzureError as exc:
                    raise StorageAccessDenied(
                        "cannot sign read URLs: getting a user delegation key failed "
                        f"(the identity needs the 'Storage Blob Delegator' role): {_reason(exc)}"
                    ) from exc
                self._delegation_key_expiry = key_expiry
            return self._delegation_key

    async def _close(self):
        try:
            await self._service.close()
        finally:
            if self._owned_credential is not None:
                await self._owned_credential.close()


def _aware(moment: Any) -> dt.datetime:
    if not isinstance(moment, dt.datetime):
        return dt.datetime.now(dt.UTC)
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _blob_endpoint(url: str) -> str:
    """The Blob endpoint of a DFS URL (`acct.dfs.core...` -> `acct.blob.core...`).

    Browsers get read links on the Blob endpoint, the one every SAS reader and CDN
    supports (the SDK itself downloads from there); emulator URLs have no `.dfs.` and are
    used as they are."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.replace(".dfs.", ".blob.", 1)))


def _reason(exc: Exception) -> str:
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None)
        return f"{exc.status_code} {code or ''} {exc.reason or ''}".strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
