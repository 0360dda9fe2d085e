"""A small in-memory server for the slice of Azure Data Lake Storage Gen2 that
`azure-storage-file-datalake` calls for files (Azurite serves only the Blob API).

It speaks the emulator URL form `http://127.0.0.1:PORT/{account}/{filesystem}/{path}`, on
which the SDK sends both its DFS calls and the Blob calls it makes underneath (download and
properties go through the Blob API even in the Data Lake SDK):

    PUT    /{fs}?restype=container | ?resource=filesystem      create file system
    PUT    /{fs}/{path}?resource=file      create (If-None-Match: * -> 409 PathAlreadyExists)
    PATCH  /{fs}/{path}?action=append&position=N               stage bytes
    PATCH  /{fs}/{path}?action=flush&position=N                commit (If-Match honoured)
    GET    /{fs}/{path}   (x-ms-range / Range)                  read, 206 for ranges
    HEAD   /{fs}/{path}                                         properties
    DELETE /{fs}/{path}                                         delete (404 PathNotFound)
    GET    /{fs}?resource=filesystem&directory=D&recursive=B   list paths (paged: maxResults,
                                                               x-ms-continuation)

Requests authenticate with Shared Key (an `Authorization: SharedKey {account}:...` header,
checked loosely) or with a service SAS, which is checked for real: signature (HMAC-SHA256
with the account key over the documented string-to-sign), start/expiry and read permission,
so a tampered or expired link is refused with 403 like the real service.

Run alone: `python -m tests.servers.adls_fake --port 10004` prints the account key.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.utils import formatdate

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

DEFAULT_ACCOUNT = "devaccount"


@dataclass
class _File:
    committed: bytes = b""
    staged: bytearray = field(default_factory=bytearray)
    content_type: str = "application/octet-stream"
    content_disposition: str | None = None
    etag: str = ""
    modified: float = 0.0
    created: float = 0.0

    def touch(self) -> None:
        self.etag = f'"0x{uuid.uuid4().hex[:16].upper()}"'
        self.modified = time.time()


def _error(status: int, code: str, message: str, *, blob_api: bool = False) -> Response:
    """Errors in the service's own shapes: XML for Blob API calls, JSON for DFS calls; the
    SDK reads the code from `x-ms-error-code` either way."""
    headers = {"x-ms-error-code": code, "x-ms-request-id": str(uuid.uuid4())}
    if blob_api:
        body = f'<?xml version="1.0" encoding="utf-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'
        return Response(body, status_code=status, headers=headers, media_type="application/xml")
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


def _parse_time(value: str) -> dt.datetime:
    return dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)


class FakeAdls:
    """The service state and its ASGI app."""

    def __init__(self, account: str = DEFAULT_ACCOUNT, account_key: str | None = None):
        self.account = account
        self.account_key = account_key or base64.b64encode(os.urandom(64)).decode()
        self.file_systems: set[str] = set()
        self.files: dict[tuple[str, str], _File] = {}
        self.directories: set[tuple[str, str]] = set()
        self.requests: list[tuple[str, str]] = []  # (method, path?query): for assertions
        self._lock = threading.Lock()
        self.app = Starlette(
            routes=[
                Route("/{account}/{fs}", self._file_system, methods=["PUT", "DELETE", "GET", "HEAD"]),
                Route(
                    "/{account}/{fs}/{path:path}",
                    self._path,
                    methods=["PUT", "PATCH", "GET", "HEAD", "DELETE"],
                ),
            ]
        )

    # ---- auth ----------------------------------------------------------------------
    def sas_signature(self, params: dict[str, str], fs: str, path: str) -> str:
        """Signature of a service SAS for a blob/file (versions 2020-12-06 and later)."""
        resource = f"/blob/{self.account}/{fs}/{path}"
        fields = [
            params.get("sp", ""),
            params.get("st", ""),
            params.get("se", ""),
            resource,
            params.get("si", ""),
            params.get("sip", ""),
            params.get("spr", ""),
            params.get("sv", ""),
            params.get("sr", ""),
            params.get("snapshot", ""),
            params.get("ses", ""),
            params.get("rscc", ""),
            params.get("rscd", ""),
            params.get("rsce", ""),
            params.get("rscl", ""),
            params.get("rsct", ""),
        ]
        string_to_sign = "\n".join(fields)
        key = base64.b64decode(self.account_key)
        return base64.b64encode(hmac.new(key, string_to_sign.encode("utf-8"), hashlib.sha256).digest()).decode()

    def _authorize(self, request: Request, fs: str, path: str, needs: str) -> Response | None:
        """None when the request may proceed, else the 401/403 the service would send."""
        params = dict(request.query_params)
        if "sig" in params:
            if "skoid" in params:
                return _error(403, "AuthenticationFailed", "user delegation SAS is not supported by the fake")
            if params.get("sr") != "b" or needs not in params.get("sp", ""):
                return _error(403, "AuthorizationPermissionMismatch", "SAS does not grant this operation")
            try:
                now = dt.datetime.now(dt.UTC)
                if now > _parse_time(params["se"]):
                    return _error(403, "AuthenticationFailed", "Signed expiry time has passed")
                if "st" in params and now < _parse_time(params["st"]):
                    return _error(403, "AuthenticationFailed", "Signed start time is in the future")
            except (KeyError, ValueError):
                return _error(403, "AuthenticationFailed", "malformed SAS times")
            expected = self.sas_signature(params, fs, path)
            if not hmac.compare_digest(expected, params["sig"]):
                return _error(403, "AuthenticationFailed", "Signature did not match")
            return None
        auth = request.headers.get("authorization", "")
        if auth.startswith(f"SharedKey {self.account}:"):
            return None
        return _error(401 if not auth else 403, "NoAuthenticationInformation", "authentication required")

    # ---- file systems ----------------------------------------------------------------
    async def _file_system(self, request: Request) -> Response:
        fs = request.path_params["fs"]
        self.requests.append((request.method, f"/{fs}?{request.url.query}"))
        if request.path_params["account"] != self.account:
            return _error(404, "ResourceNotFound", "no such account")
        denied = self._authorize(request, fs, "", "w")
        if denied:
            return denied
        blob_api = request.query_params.get("restype") == "container"
        if request.method == "PUT":
            with self._lock:
                if fs in self.file_systems:
                    return _error(409, "ContainerAlreadyExists", "exists", blob_api=blob_api)
                self.file_systems.add(fs)
            return Response(status_code=201, headers=self._common_headers(etag=f'"{uuid.uuid4().hex}"'))
        if request.method == "DELETE":
            with self._lock:
                self.file_systems.discard(fs)
                for key in [k for k in self.files if k[0] == fs]:
                    del self.files[key]
                self.directories = {d for d in self.directories if d[0] != fs}
            return Response(status_code=202)
        if fs not in self.file_systems:
            if request.method == "GET" and request.query_params.get("resource") == "filesystem":
                return _error(404, "FilesystemNotFound", "The specified filesystem does not exist.")
            return _error(404, "ContainerNotFound", "no such file system", blob_api=True)
        if request.method == "GET" and request.query_params.get("resource") == "filesystem":
            return self._list_paths(request, fs)
        return Response(status_code=200, headers=self._common_headers())

    def _list_paths(self, request: Request, fs: str) -> Response:
        """Path - List: files and directories under `directory`, in name order, a page of
        `maxResults` at a time with the next page's name as the continuation token."""
        directory = request.query_params.get("directory", "").strip("/")
        recursive = request.query_params.get("recursive", "false") == "true"
        # The service's default page is 5000 paths; a smaller one here makes the tests page.
        limit = int(request.query_params.get("maxResults") or 500)
        after = request.query_params.get("continuation", "")
        with self._lock:
            if directory and (fs, directory) not in self.directories:
                return _error(404, "PathNotFound", "The specified path does not exist.")
            under = f"{directory}/" if directory else ""
            entries = [(p, self.files.get((f, p))) for (f, p) in [*self.files, *self.directories]
                       if f == fs and p.startswith(under) and (recursive or "/" not in p[len(under):])]
        entries.sort(key=lambda item: item[0])
        page = [item for item in entries if item[0] >= after][: limit + 1]
        paths = []
        for name, entry in page[:limit]:
            if entry is None:
                paths.append({"name": name, "isDirectory": "true", "contentLength": "0",
                              "lastModified": formatdate(usegmt=True), "etag": '"0x0"'})
            else:
                paths.append({"name": name, "contentLength": str(len(entry.committed)),
                              "lastModified": formatdate(entry.modified, usegmt=True), "etag": entry.etag})
        headers = self._common_headers()
        if len(page) > limit:
            headers["x-ms-continuation"] = page[limit][0]
        return JSONResponse({"paths": paths}, headers=headers)

    # ---- paths -----------------------------------------------------------------------
    async def _path(self, request: Request) -> Response:
        fs = request.path_params["fs"]
        path = request.path_params["path"]  # already percent-decoded by the server
        self.requests.append((request.method, f"/{fs}/{path}?{request.url.query}"))
        if request.path_params["account"] != self.account:
            return _error(404, "ResourceNotFound", "no such account")
        read = request.method in ("GET", "HEAD")
        denied = self._authorize(request, fs, path, "r" if read else "w")
        if denied:
            return denied
        if fs not in self.file_systems:
            return _error(404, "ContainerNotFound" if read else "FilesystemNotFound", "no such file system", blob_api=read)
        handler = {
            "PUT": self._create,
            "PATCH": self._patch,
            "GET": self._read,
            "HEAD": self._read,
            "DELETE": self._delete,
        }[request.method]
        return await handler(request, fs, path)

    def _common_headers(self, entry: _File | None = None, etag: str | None = None) -> dict[str, str]:
        headers = {"x-ms-request-id": str(uuid.uuid4()), "x-ms-version": "2025-01-05", "Date": formatdate(usegmt=True)}
        if entry is not None:
            headers["ETag"] = entry.etag
            headers["Last-Modified"] = formatdate(entry.modified, usegmt=True)
        elif etag:
            headers["ETag"] = etag
        return headers

    async def _create(self, request: Request, fs: str, path: str) -> Response:
        if request.query_params.get("resource") not in ("file", "directory"):
            return _error(400, "InvalidQueryParameterValue", "only resource=file|directory is implemented")
        with self._lock:
            existing = self.files.get((fs, path))
            if (fs, path) in self.directories and request.query_params["resource"] == "file":
                return _error(409, "PathConflict", "a directory exists at this path")
            if request.headers.get("if-none-match") == "*" and (existing or (fs, path) in self.directories):
                return _error(409, "PathAlreadyExists", "The specified path already exists.")
            if_match = request.headers.get("if-match")
            if if_match and (existing is None or if_match not in ("*", existing.etag)):
                return _error(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
            parts = path.split("/")
            for depth in range(1, len(parts)):
                parent = "/".join(parts[:depth])
                if (fs, parent) in self.files:
                    return _error(409, "PathConflict", f"{parent} is a file")
            for depth in range(1, len(parts)):
                self.directories.add((fs, "/".join(parts[:depth])))
            if request.query_params["resource"] == "directory":
                self.directories.add((fs, path))
                return Response(status_code=201, headers=self._common_headers(etag=f'"{uuid.uuid4().hex}"'))
            entry = _File(created=time.time())
            entry.content_type = request.headers.get("x-ms-content-type", entry.content_type)
            entry.content_disposition = request.headers.get("x-ms-content-disposition")
            entry.touch()
            self.files[(fs, path)] = entry
        return Response(status_code=201, headers={**self._common_headers(entry), "Content-Length": "0"})

    async def _patch(self, request: Request, fs: str, path: str) -> Response:
        action = request.query_params.get("action")
        body = await request.body()
        with self._lock:
            entry = self.files.get((fs, path))
            if entry is None:
                return _error(404, "PathNotFound", "The specified path does not exist.")
            try:
                position = int(request.query_params.get("position", "-1"))
            except ValueError:
                position = -1
            if action == "append":
                if position != len(entry.staged):
                    return _error(400, "InvalidFlushPosition", "append position does not match staged data")
                entry.staged.extend(body)
                return Response(status_code=202, headers=self._common_headers())
            if action == "flush":
                if_match = request.headers.get("if-match")
                if if_match and if_match != entry.etag:
                    return _error(412, "ConditionNotMet", "The condition specified using HTTP conditional header(s) is not met.")
                if position != len(entry.staged):
                    return _error(400, "InvalidFlushPosition", "flush position does not match staged data")
                entry.committed = bytes(entry.staged)
                entry.content_type = request.headers.get("x-ms-content-type", entry.content_type)
                entry.content_disposition = request.headers.get("x-ms-content-disposition", entry.content_disposition)
                entry.touch()
                return Response(status_code=200, headers={**self._common_headers(entry), "Content-Length": "0"})
        return _error(400, "InvalidQueryParameterValue", f"action={action} is not implemented")

    async def _read(self, request: Request, fs: str, path: str) -> Response:
        with self._lock:
            entry = self.files.get((fs, path))
            data = entry.committed if entry else b""
        if entry is None:
            return _error(404, "BlobNotFound", "The specified blob does not exist.", blob_api=True)
        headers = {
            **self._common_headers(entry),
            "Content-Type": entry.content_type,
            "Accept-Ranges": "bytes",
            "x-ms-blob-type": "BlockBlob",
            "x-ms-creation-time": formatdate(entry.created, usegmt=True),
            "x-ms-resource-type": "file",
        }
        if entry.content_disposition:
            headers["Content-Disposition"] = entry.content_disposition
        # A SAS may override response headers (rsct/rscd) as the real service allows.
        if "sig" in request.query_params:
            if "rsct" in request.query_params:
                headers["Content-Type"] = request.query_params["rsct"]
            if "rscd" in request.query_params:
                headers["Content-Disposition"] = request.query_params["rscd"]
        byte_range = request.headers.get("x-ms-range") or request.headers.get("range")
        status, body = 200, data
        if byte_range and byte_range.startswith("bytes="):
            start_text, _, end_text = byte_range[6:].partition("-")
            start = int(start_text)
            end = min(int(end_text) if end_text else len(data) - 1, len(data) - 1)
            if start >= len(data):
                return _error(416, "InvalidRange", "The range specified is invalid for the current size of the resource.", blob_api=True)
            status, body = 206, data[start : end + 1]
            headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        headers["Content-Length"] = str(len(body))
        if request.method == "HEAD":
            return Response(status_code=200, headers={**headers, "Content-Length": str(len(data))})
        return Response(body, status_code=status, headers=headers)

    async def _delete(self, request: Request, fs: str, path: str) -> Response:
        with self._lock:
            if self.files.pop((fs, path), None) is not None:
                return Response(status_code=200, headers=self._common_headers())
            if (fs, path) in self.directories:
                children = [p for (f, p) in [*self.files, *self.directories] if f == fs and p.startswith(path + "/")]
                if children and request.query_params.get("recursive") != "true":
                    return _error(409, "DirectoryNotEmpty", "The recursive query parameter value must be true.")
                for child in children:
                    self.files.pop((fs, child), None)
                    self.directories.discard((fs, child))
                self.directories.discard((fs, path))
                return Response(status_code=200, headers=self._common_headers())
        return _error(404, "PathNotFound", "The specified path does not exist.")


class ServerThread:
    """Serve an ASGI app with uvicorn on a free loopback port, in a daemon thread."""

    def __init__(self, app):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))  # bound here, so no other process can take the port
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server thread did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class FakeAdlsServer:
    """FakeAdls served on a loopback port: `.account_url` is what the SDK is given."""

    def __init__(self, account: str = DEFAULT_ACCOUNT, account_key: str | None = None):
        self.fake = FakeAdls(account, account_key)
        self._thread = ServerThread(self.fake.app)

    @property
    def account_name(self) -> str:
        return self.fake.account

    @property
    def account_key(self) -> str:
        return self.fake.account_key

    @property
    def account_url(self) -> str:
        return f"{self._thread.base_url}/{self.fake.account}"

    def start(self) -> FakeAdlsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._thread.stop()


if __name__ == "__main__":
    import argparse

    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=10004)
    parser.add_argument("--account", default=DEFAULT_ACCOUNT)
    args = parser.parse_args()
    fake = FakeAdls(args.account)
    print(f"account_url=http://127.0.0.1:{args.port}/{fake.account}")
    print(f"account_key={fake.account_key}")
    uvicorn.run(fake.app, host="127.0.0.1", port=args.port, log_level="warning")
