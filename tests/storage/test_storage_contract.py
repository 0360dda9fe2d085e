"""The storage contract, run against every client through one parametrized fixture.

memory  in-process
local   files under a temp dir, links served by a real uvicorn server (download route
        mounted in front of a Chainlit-like catch-all route)
s3      moto's S3 server on a loopback port
azure   tests/servers/adls_fake.py on a loopback port
azure-real  a real ADLS Gen2 account, only when TEST_AZURE_STORAGE_URL is set, e.g.
            abfss://container@account.dfs.core.windows.net/ci-tests (key from
            AZURE_STORAGE_KEY, else DefaultAzureCredential)
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from storage import BlobStorage
from storage.local import LocalStorage
from storage.memory import MemoryStorage
from tests.contracts.storage import StorageContract
from tests.storage.conftest import http_fetch, require, sigv4_presigned_url_is_valid

Fetch = Callable[[str], Awaitable[tuple[int, bytes]]]


@dataclass
class Backend:
    storage: BlobStorage
    fetch_url: Fetch
    verifies_signatures: bool


def memory_fetch(storage: MemoryStorage) -> Fetch:
    """memory:// links are not HTTP: resolve them against the store, as a browser would
    resolve an http link against a server."""

    async def fetch(url: str) -> tuple[int, bytes]:
        parts = urlsplit(url)
        assert parts.scheme == "memory", url
        entry = storage.objects.get(unquote(parts.netloc + parts.path))
        return (200, entry[0]) if entry else (404, b"")

    return fetch


async def make_memory(request, tmp_path: Path) -> Backend:
    storage = MemoryStorage.from_url("memory://", data_dir=tmp_path, secret=b"")
    return Backend(storage, memory_fetch(storage), verifies_signatures=False)


async def make_local(request, tmp_path: Path) -> Backend:
    app = request.getfixturevalue("blob_http_app")
    storage = LocalStorage.from_url(
        f"file://{tmp_path}/blobs?base_url={app.state.base_url}/blobs",
        data_dir=tmp_path,
        secret=secrets.token_bytes(32),
    )
    storage.mount(app)
    return Backend(storage, http_fetch, verifies_signatures=True)


async def make_s3(request, tmp_path: Path) -> Backend:
    endpoint = request.getfixturevalue("moto_s3")
    aioboto3 = require("aioboto3")
    from storage.s3 import S3Storage

    bucket = f"contract-{uuid.uuid4().hex[:16]}"
    async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        await s3.create_bucket(Bucket=bucket)
    storage = S3Storage.from_url(f"s3://{bucket}?region=us-east-1&endpoint_url={endpoint}", data_dir=tmp_path, secret=b"")

    async def fetch(url: str) -> tuple[int, bytes]:
        # moto serves presigned URLs without checking their signature or expiry: check the
        # signature here, as S3 would, before letting the request through to moto.
        if not sigv4_presigned_url_is_valid(url, secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="us-east-1"):
            return 403, b""
        return await http_fetch(url)

    return Backend(storage, fetch, verifies_signatures=True)


async def make_azure(request, tmp_path: Path) -> Backend:
    server = request.getfixturevalue("adls_fake")
    from storage.azure import AzureDataLakeStorage

    file_system = f"contract{uuid.uuid4().hex[:12]}"
    storage = AzureDataLakeStorage(server.account_url, file_system, "app-prefix", credential=server.account_key)
    await storage._fs.create_file_system()
    return Backend(storage, http_fetch, verifies_signatures=True)


async def make_azure_real(request, tmp_path: Path) -> Backend:
    url = os.environ["TEST_AZURE_STORAGE_URL"]
    require("azure.storage.filedatalake.aio")
    from storage.azure import AzureDataLakeStorage

    storage = AzureDataLakeStorage.from_url(url, data_dir=tmp_path, secret=b"")
    # Each run works under its own prefix of the configured file system.
    storage.prefix = f"{storage.prefix}contract-{uuid.uuid4().hex}/"
    return Backend(storage, http_fetch, verifies_signatures=True)


BACKENDS = {
    "memory": make_memory,
    "local": make_local,
    "s3": make_s3,
    "azure": make_azure,
}
# A real account joins only when one is configured (it costs money and needs secrets).
if os.environ.get("TEST_AZURE_STORAGE_URL"):
    BACKENDS["azure-real"] = make_azure_real


@pytest.fixture(params=list(BACKENDS))
async def backend(request, tmp_path):
    made = await BACKENDS[request.param](request, tmp_path)
    try:
        yield made
    finally:
        await made.storage.close()


class TestStorageContract(StorageContract):
    @pytest.fixture
    def storage(self, backend):
        return backend.storage

    @pytest.fixture
    def fetch_url(self, backend):
        return backend.fetch_url

    @pytest.fixture
    def verifies_signatures(self, backend):
        return backend.verifies_signatures
