"""S3Storage beyond the shared contract, against moto's server: region and endpoint in
presigned URLs, prefixes, stored headers, batch deletes and error translation."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from urllib.parse import parse_qs, urlsplit

import pytest

from storage import InvalidObjectKey, ObjectNotFound, StorageAccessDenied, StorageError
from tests.storage.conftest import (
    http_fetch_response,
    require,
    sigv4_presigned_url_is_valid,
)

aioboto3 = require("aioboto3")
from botocore.exceptions import ClientError  # noqa: E402  (after the SDK check)

from storage.s3 import S3Storage  # noqa: E402


async def make_bucket(endpoint: str, region: str) -> str:
    bucket = f"s3test-{uuid.uuid4().hex[:16]}"
    async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name=region) as s3:
        if region == "us-east-1":
            await s3.create_bucket(Bucket=bucket)
        else:
            await s3.create_bucket(Bucket=bucket, CreateBucketConfiguration={"LocationConstraint": region})
    return bucket


async def list_keys(endpoint: str, bucket: str) -> list[str]:
    async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        response = await s3.list_objects_v2(Bucket=bucket)
        return sorted(obj["Key"] for obj in response.get("Contents", []))


@pytest.fixture
async def s3_storage(moto_s3):
    bucket = await make_bucket(moto_s3, "us-east-1")
    storage = S3Storage(bucket, "app/blobs/", region_name="us-east-1", endpoint_url=moto_s3)
    yield storage
    await storage.close()


async def test_presigned_url_honours_region_and_endpoint(moto_s3):
    bucket = await make_bucket(moto_s3, "eu-west-3")
    storage = S3Storage.from_url(f"s3://{bucket}/p?region=eu-west-3&endpoint_url={moto_s3}", data_dir=None, secret=b"")
    await storage.upload_file("u/t/e/f.txt", b"paris")
    url = await storage.get_read_url("u/t/e/f.txt")
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}" == moto_s3
    assert "/eu-west-3/s3/aws4_request" in parse_qs(parts.query)["X-Amz-Credential"][0]
    assert sigv4_presigned_url_is_valid(url, secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="eu-west-3")
    assert not sigv4_presigned_url_is_valid(url, secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="us-east-1")
    assert not sigv4_presigned_url_is_valid(url, secret_key="another-secret", region="eu-west-3")
    later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=storage.url_expiry_seconds + 60)
    assert not sigv4_presigned_url_is_valid(url, secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="eu-west-3", now=later)
    assert (await http_fetch_response(url)).content == b"paris"
    await storage.close()


async def test_expiry_is_the_configured_one(s3_storage):
    s3_storage.url_expiry_seconds = 120
    url = await s3_storage.get_read_url("u/t/e/f.txt")
    assert parse_qs(urlsplit(url).query)["X-Amz-Expires"] == ["120"]


async def test_objects_live_under_the_prefix_with_their_headers(s3_storage, moto_s3):
    await s3_storage.upload_file("u/t/e/été.pdf", b"%PDF", "application/pdf")
    assert await list_keys(moto_s3, s3_storage.bucket) == ["app/blobs/u/t/e/été.pdf"]
    response = await http_fetch_response(await s3_storage.get_read_url("u/t/e/été.pdf"))
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/pdf"
    assert response.headers["content-disposition"] == "inline; filename=\"_t_.pdf\"; filename*=UTF-8''%C3%A9t%C3%A9.pdf"


async def test_prefix_counts_towards_the_key_limit(s3_storage):
    key = "k/" + "x" * 1015  # valid alone (1017 bytes), too long after "app/blobs/"
    with pytest.raises(InvalidObjectKey):
        await s3_storage.upload_file(key, b"x")


async def test_batch_delete_in_chunks(s3_storage, moto_s3):
    s3_storage.delete_batch_size = 7
    keys = [f"u/t/e{i}/f.txt" for i in range(20)]
    for key in keys:
        await s3_storage.upload_file(key, b"x")
    client = await s3_storage._s3()
    calls: list[int] = []
    original = client.delete_objects

    async def counting_delete_objects(**kwargs):
        calls.append(len(kwargs["Delete"]["Objects"]))
        return await original(**kwargs)

    client.delete_objects = counting_delete_objects
    await s3_storage.delete_files(keys + keys[:3])  # duplicates are sent once
    assert calls == [7, 7, 6]
    assert await list_keys(moto_s3, s3_storage.bucket) == []


@pytest.mark.parametrize(
    "errors, expected",
    [
        ([{"Key": "app/blobs/a", "Code": "AccessDenied", "Message": "no"}], StorageAccessDenied),
        ([{"Key": "app/blobs/a", "Code": "InternalError", "Message": "oops"}], StorageError),
    ],
)
async def test_batch_delete_reports_per_key_errors(s3_storage, errors, expected):
    """DeleteObjects answers 200 with failures listed in `Errors`: they must not be lost."""
    client = await s3_storage._s3()

    async def failing_delete_objects(**kwargs):
        return {"Deleted": [], "Errors": errors}

    client.delete_objects = failing_delete_objects
    with pytest.raises(expected) as info:
        await s3_storage.delete_files(["a", "b"])
    assert "app/blobs/a" in str(info.value)


async def test_missing_bucket_is_not_a_missing_object(moto_s3):
    storage = S3Storage(f"absent-{uuid.uuid4().hex[:12]}", endpoint_url=moto_s3, region_name="us-east-1")
    with pytest.raises(StorageError) as info:
        await storage.read_file("u/t/e/f")
    assert not isinstance(info.value, ObjectNotFound)
    assert "does not exist" in str(info.value)
    await storage.close()


@pytest.mark.parametrize(
    "code, expected",
    [
        ("NoSuchKey", ObjectNotFound),
        ("404", ObjectNotFound),
        ("AccessDenied", StorageAccessDenied),
        ("InvalidAccessKeyId", StorageAccessDenied),
        ("SignatureDoesNotMatch", StorageAccessDenied),
        ("SlowDown", StorageError),
    ],
)
def test_client_errors_are_translated(code, expected):
    storage = S3Storage("bucket")
    error = ClientError({"Error": {"Code": code, "Message": "msg"}}, "GetObject")
    translated = storage._translate(error, "get", "u/t/e/f")
    assert type(translated) is expected
    if expected is StorageError:
        assert code in str(translated) and "s3://bucket/u/t/e/f" in str(translated)


async def test_one_client_is_reused_and_closed(s3_storage):
    await s3_storage.upload_file("u/t/e/f", b"x")
    client = await s3_storage._s3()
    await s3_storage.read_file("u/t/e/f")
    assert await s3_storage._s3() is client
    await s3_storage.close()
    assert s3_storage._client is None


def test_from_url_forms():
    storage = S3Storage.from_url(
        "s3://my-bucket/some/prefix/?region=eu-central-1&endpoint_url=http://minio:9000&addressing_style=path&expiry=300",
        data_dir=None,
        secret=b"",
    )
    assert (storage.bucket, storage.prefix, storage.region_name) == ("my-bucket", "some/prefix/", "eu-central-1")
    assert storage.endpoint_url == "http://minio:9000"
    assert storage.url_expiry_seconds == 300
    bare = S3Storage.from_url("s3://b", data_dir=None, secret=b"")
    assert (bare.bucket, bare.prefix, bare.region_name, bare.endpoint_url) == ("b", "", None, None)
    assert "my-bucket" in repr(storage)
    for bad in ("s3://", "s3:///prefix", "file:///x"):
        with pytest.raises(ValueError):
            S3Storage.from_url(bad, data_dir=None, secret=b"")


# ---- serving policy ---------------------------------------------------------------


async def head(endpoint: str, bucket: str, key: str) -> dict:
    async with aioboto3.Session().client("s3", endpoint_url=endpoint, region_name="us-east-1") as s3:
        return await s3.head_object(Bucket=bucket, Key=key)


async def test_a_declared_type_that_does_not_parse_is_stored_and_served_as_a_download(s3_storage, moto_s3):
    await s3_storage.upload_file("u/t/e/x.png", b"<script>alert(1)</script>", "image/png,text/html")
    stored = await head(moto_s3, s3_storage.bucket, "app/blobs/u/t/e/x.png")
    assert stored["ContentType"] == "application/octet-stream"
    assert stored["ContentDisposition"].startswith("attachment;")
    url = await s3_storage.get_read_url("u/t/e/x.png", mime="application/octet-stream")
    query = parse_qs(urlsplit(url).query)
    assert query["response-content-type"] == ["application/octet-stream"]
    assert query["response-content-disposition"][0].startswith("attachment;")
    assert sigv4_presigned_url_is_valid(url, secret_key=os.environ["AWS_SECRET_ACCESS_KEY"], region="us-east-1")
    response = await http_fetch_response(url)
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")


async def test_the_link_overrides_what_an_object_was_stored_with(s3_storage, moto_s3):
    """An object written by an older version, or by hand, as an inline page."""
    async with aioboto3.Session().client("s3", endpoint_url=moto_s3, region_name="us-east-1") as s3:
        await s3.put_object(Bucket=s3_storage.bucket, Key="app/blobs/u/t/e/page.html", Body=b"<script>1</script>",
                            ContentType="text/html", ContentDisposition="inline")
    for url in (await s3_storage.get_read_url("u/t/e/page.html", mime="image/png,text/html"),
                await s3_storage.get_read_url("u/t/e/page.html")):  # no type known: the name's
        response = await http_fetch_response(url)
        assert response.status_code == 200
        assert response.headers["content-disposition"].startswith("attachment;")
        assert response.headers["content-type"] in ("application/octet-stream", "text/html")


async def test_allow_listed_types_are_linked_inline(s3_storage):
    await s3_storage.upload_file("u/t/e/photo.png", b"\x89PNG", "image/png")
    response = await http_fetch_response(await s3_storage.get_read_url("u/t/e/photo.png", mime="image/png"))
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("inline;")
