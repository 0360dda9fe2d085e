"""DynamoDB outages on moto: a moto server that can be stopped and started again on the same
port without losing its tables, and a proxy that answers DynamoDB calls with throttling or
server errors while switched on.

Why moto runs in the test process: moto keeps its data in process memory and has no on-disk
store, so a moto server in a subprocess loses every table when it is stopped (the tables
would have to be recreated, which is not what an outage does to a real service). In-process,
the data lives in moto's global backends, independent of the HTTP server, so the server can
go away and come back with the same tables.

Why not moto's own `ThreadedMotoServer`: it can be stopped and started again on the same port
too (checked), but it binds the port in its server thread and its `start()` waits forever
if that fails (say the port was taken while it was down). `StoppableMotoServer` binds in the
caller, so a lost port is an error at once, and its `stop()` closes the listening socket and
cuts every open connection before returning: from the app's side the server is gone.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import threading
import uuid
from collections import Counter
from urllib.parse import urlsplit

from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server

DYNAMODB_TARGET_PREFIX = "DynamoDB_20120810."
FAULTS = {
    "throttle": (400, "Bad Request", {"__type": "com.amazonaws.dynamodb.v20120810#ThrottlingException",
                                      "message": "Rate exceeded"}),
    "error": (500, "Internal Server Error", {"__type": "com.amazonaws.dynamodb.v20120810#InternalServerError",
                                             "message": "Internal server error"}),
}
MODES = ("pass", "throttle", "error", "mixed")
HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "te", "upgrade"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _TrackingHandler(MotoRequestHandler):
    """Moto's request handler, registering its connection so `stop()` can cut it."""

    def log_request(self, *args, **kwargs) -> None:
        pass  # a line per request would bury the test output

    def setup(self) -> None:
        super().setup()
        with self.server.live_lock:
            self.server.live.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.live_lock:
                self.server.live.discard(self.connection)


class StoppableMotoServer:
    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # One application for every start: moto's per-service Flask apps are built once.
        self._app = DomainDispatcherApplication(create_backend_app)
        self._server = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> None:
        if self._server is not None:
            return
        server = make_server("127.0.0.1", self.port, self._app, threaded=True, request_handler=_TrackingHandler)
        server.live, server.live_lock = set(), threading.Lock()
        # Connections cut by stop() end their handler threads with socket errors: expected.
        server.handle_error = lambda request, client_address: None
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name=f"moto-{self.port}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()  # the port now refuses connections
        with server.live_lock:
            live = list(server.live)
        for conn in live:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self._thread.join(timeout=10)

    def __enter__(self) -> StoppableMotoServer:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class FaultProxy:
    """An HTTP/1.1 proxy in front of `upstream` (a moto URL).

    `mode` "pass" forwards everything; "throttle" / "error" answer every DynamoDB call
    (header `X-Amz-Target: DynamoDB_20120810.*`) with a ThrottlingException (HTTP 400) or an
    InternalServerError (HTTP 500) as DynamoDB does; "mixed" alternates the two. Requests
    that are not DynamoDB calls are always forwarded. It runs its own event loop in a
    thread, so it keeps answering whatever the test's loop is doing.

    Each client connection gets its own kept-alive connection to moto; when moto goes away
    that connection breaks and the client's is reset, so the app sees what it would see
    without the proxy.
    """

    def __init__(self, upstream: str, port: int | None = None):
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.mode = "pass"
        self.counts: Counter[str] = Counter()
        self._alternate = itertools.cycle(("throttle", "error"))
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.AbstractServer | None = None
        self._ready = threading.Event()
        self._failed: BaseException | None = None

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.mode = mode

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"fault-proxy-{self.port}", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or self._failed:
            raise RuntimeError(f"the fault proxy did not start: {self._failed!r}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self._loop = loop
        try:
            self._server = loop.run_until_complete(asyncio.start_server(self._client, "127.0.0.1", self.port))
        except BaseException as exc:  # reported by start()
            self._failed = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        # stop(): close the listener, then cancel what is still running.
        self._server.close()
        pending = [t for t in asyncio.all_tasks(loop)]
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(self._server.wait_closed())
        loop.close()

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # ------------------------------------------------------------------ serving
    def _fault_for(self, target: str) -> str | None:
        mode = self.mode
        if mode == "pass" or not target.startswith(DYNAMODB_TARGET_PREFIX):
            return None
        return next(self._alternate) if mode == "mixed" else mode

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream: list = [None, None]  # this client's kept-alive connection to moto
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
                    return
                _, headers = _parse_head(head)
                if "chunked" in headers.get("transfer-encoding", "").lower():
                    # botocore always sends Content-Length to DynamoDB; anything else is a bug here.
                    writer.write(_response(501, "Not Implemented", b"chunked requests are not supported"))
                    await writer.drain()
                    return
                body = await reader.readexactly(int(headers.get("content-length", "0") or 0))
                fault = self._fault_for(headers.get("x-amz-target", ""))
                if fault is not None:
                    status, reason, payload = FAULTS[fault]
                    self.counts[fault] += 1
                    writer.write(_response(status, reason, json.dumps(payload).encode()))
                    await writer.drain()
                    continue
                if not await self._forward(_without_hop_by_hop(head), body, writer, upstream):
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            if upstream[1] is not None:
                upstream[1].close()
            writer.close()

    async def _forward(self, head: bytes, body: bytes, writer: asyncio.StreamWriter, upstream: list) -> bool:
        """Relay one request and its response; False when the client connection must end."""
        try:
            if upstream[0] is None:
                upstream[:] = await asyncio.open_connection(*self.upstream)
            up_reader, up_writer = upstream
            up_writer.write(head + body)
            await up_writer.drain()
            response_head = await up_reader.readuntil(b"\r\n\r\n")
            _, headers = _parse_head(response_head)
            if "content-length" in headers:
                response_body = await up_reader.readexactly(int(headers["content-length"]))
            elif "chunked" in headers.get("transfer-encoding", "").lower():
                response_body = await _read_chunked(up_reader)
            else:
                response_body = await up_reader.read()  # delimited by the end of the connection
                headers["connection"] = "close"
        except (OSError, asyncio.IncompleteReadError):
            # Moto is down or cut the connection: the client's connection is reset, as it would
            # be without a proxy in between, and its SDK retries on a new one.
            self.counts["upstream_failed"] += 1
            if upstream[1] is not None:
                upstream[1].close()
            upstream[:] = [None, None]
            writer.transport.abort()
            return False
        writer.write(response_head + response_body)
        await writer.drain()
        self.counts["forwarded"] += 1
        if headers.get("connection", "").lower() == "close":
            upstream[1].close()
            upstream[:] = [None, None]
            return False
        return True


def _parse_head(head: bytes) -> tuple[str, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    return lines[0], headers


def _without_hop_by_hop(head: bytes) -> bytes:
    """The request head without its hop-by-hop headers (HTTP/1.1 keeps the connection)."""
    lines = head.decode("latin-1").split("\r\n")
    kept = [lines[0]] + [line for line in lines[1:] if line and line.split(":", 1)[0].strip().lower() not in HOP_BY_HOP]
    return ("\r\n".join(kept) + "\r\n\r\n").encode("latin-1")


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    """A chunked body, raw (sizes and trailers included), as it is relayed unchanged."""
    raw = b""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        raw += size_line
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while (line := await reader.readuntil(b"\r\n")) != b"\r\n":
                raw += line
            return raw + b"\r\n"
        raw += await reader.readexactly(size + 2)


def _response(status: int, reason: str, body: bytes) -> bytes:
    head = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/x-amz-json-1.0",
        f"Content-Length: {len(body)}",
        f"x-amzn-RequestId: {uuid.uuid4()}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
