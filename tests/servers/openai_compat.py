"""An OpenAI-compatible chat-completions server for tests, on a free loopback port.

It runs in a background thread (so it serves a `chainlit run` subprocess as well as
in-process SDK calls), answers `POST /v1/chat/completions` streamed (SSE chunks, then a
usage chunk when `stream_options.include_usage` is set, then `[DONE]`) or whole, and
records every request body so tests can assert what the model was sent.

Behaviour is scripted per request: `server.script(Reply(...), Fail(429), Stall(...))`
queues actions consumed in order; with an empty queue, `server.responder(body)` answers.

`POST /v1/embeddings` answers in OpenAI's shape (floats, or base64 float32 as the SDK asks by
default) with deterministic vectors: a hashed bag of word stems and character trigrams, so
texts that share words are close. Its requests are recorded in `embedding_requests` and its
own queue is scripted with `server.script_embeddings(Fail(503), Stall(...))`; a model outside
`embedding_models` is a 404 like OpenAI's.

    with OpenAICompatServer() as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="test")
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Reply:
    """Answer with `text`, streamed in `chunks` pieces (default: word by word)."""

    text: str
    chunks: list[str] | None = None
    model: str | None = None
    chunk_delay: float = 0.0
    finish_reason: str = "stop"


@dataclass
class Fail:
    """Answer with an HTTP error in OpenAI's error format."""

    status: int
    message: str = "scripted failure"
    error_type: str = "server_error"
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stall:
    """Send the first `after_chunks` chunks of `text` (0: not even headers), then hang."""

    seconds: float
    after_chunks: int = 0
    text: str = "This answer never finishes"


def default_responder(body: dict) -> str:
    """`Echo: <last user message>` plus how many earlier messages the request carried."""
    messages = body.get("messages") or []
    users = [m for m in messages if m.get("role") == "user"]
    last = users[-1]["content"] if users else ""
    if isinstance(last, list):
        last = " ".join(part.get("text", "") for part in last if isinstance(part, dict))
    earlier = len([m for m in messages if m.get("role") in ("user", "assistant")]) - 1
    return f"Echo: {last} (earlier messages: {max(earlier, 0)})"


def count_tokens(text: str) -> int:
    return len(text.split())


EMBEDDING_MODELS = ("test-embedding", "text-embedding-3-small")
EMBEDDING_DIMENSIONS = 256
_WORD = re.compile(r"\w+")
_SUFFIXES = ("ing", "ed", "es", "s")


def _stem(word: str) -> str:
    for suffix in _SUFFIXES:
        if len(word) > len(suffix) + 2 and word.endswith(suffix):
            return word[: -len(suffix)]
    return word


def _bucket(feature: str, dimensions: int) -> tuple[int, float]:
    digest = hashlib.blake2b(feature.encode(), digest_size=8).digest()
    value = int.from_bytes(digest, "little")
    return value % dimensions, (1.0 if value >> 63 else -1.0)


def hashed_embedding(text: str, dimensions: int = EMBEDDING_DIMENSIONS) -> list[float]:
    """A deterministic unit vector: word stems (weight 1) and their character trigrams (0.3)
    hashed into `dimensions` signed buckets. Texts sharing words have a high cosine."""
    vector = [0.0] * dimensions
    for word in _WORD.findall(text.lower()):
        stem = _stem(word)
        index, sign = _bucket("w:" + stem, dimensions)
        vector[index] += sign
        padded = f"<{stem}>"
        for i in range(len(padded) - 2):
            index, sign = _bucket("t:" + padded[i : i + 3], dimensions)
            vector[index] += 0.3 * sign
    norm = math.sqrt(sum(x * x for x in vector))
    if norm == 0.0:  # no word at all: a fixed unit vector rather than zeros
        vector[0], norm = 1.0, 1.0
    return [x / norm for x in vector]


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: twenty clients at once would wait for the
    # kernel's SYN retry (about a second).
    request_queue_size = 128


class OpenAICompatServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, model: str = "test-model"):
        self.model = model
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.responder: Callable[[dict], str] = default_responder
        self._script: list[Reply | Fail | Stall] = []
        self.embedding_models: set[str] = set(EMBEDDING_MODELS)
        self.embedding_requests: list[dict[str, Any]] = []
        self._embedding_script: list[Fail | Stall] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    # ---- control -------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def script(self, *actions: Reply | Fail | Stall) -> None:
        with self._lock:
            self._script.extend(actions)

    def script_embeddings(self, *actions: Fail | Stall) -> None:
        """Queue failures or stalls for the next embedding requests (apart from chat's)."""
        with self._lock:
            self._embedding_script.extend(actions)

    def chat_requests(self, stream: bool | None = None) -> list[dict[str, Any]]:
        with self._lock:
            items = list(self.requests)
        return [r for r in items if stream is None or bool(r.get("stream")) == stream]

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.headers.clear()
            self._script.clear()
            self.embedding_requests.clear()
            self._embedding_script.clear()
        self.embedding_models = set(EMBEDDING_MODELS)
        self.responder = default_responder

    def start(self) -> OpenAICompatServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="openai-compat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> OpenAICompatServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _next_action(self, body: dict) -> Reply | Fail | Stall:
        with self._lock:
            self.requests.append(body)
            if self._script:
                return self._script.pop(0)
        return Reply(self.responder(body))

    # ---- HTTP ------------------------------------------------------------------------
    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Each streamed chunk is its own small write: without this, a delayed ACK now and
            # then holds one for 40 ms, which is the model's latency as the app sees it.
            disable_nagle_algorithm = True

            def log_message(self, format, *args):  # keep test output clean
                pass

            def _json(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._json(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                else:
                    self._json(404, {"error": {"message": "not found", "type": "invalid_request_error"}})

            def do_POST(self):
                if self.path.rstrip("/").endswith("/embeddings"):
                    self._embeddings()
                    return
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._json(404, {"error": {"message": f"no route {self.path}", "type": "invalid_request_error"}})
                    return
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._json(400, {"error": {"message": "invalid JSON", "type": "invalid_request_error"}})
                    return
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                action = server._next_action(body)
                if isinstance(action, Fail):
                    self._json(
                        action.status,
                        {"error": {"message": action.message, "type": action.error_type, "code": None}},
                        action.headers,
                    )
                    return
                if isinstance(action, Stall) and action.after_chunks == 0:
                    server._stopping.wait(action.seconds)
                    self.close_connection = True
                    return
                if body.get("stream"):
                    self._stream(body, action)
                else:
                    self._whole(body, action)

            def _invalid(self, message: str, status: int = 400, code: str | None = None) -> None:
                self._json(status, {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}})

            def _embeddings(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except json.JSONDecodeError:
                    self._invalid("invalid JSON")
                    return
                with server._lock:
                    server.embedding_requests.append(body)
                    action = server._embedding_script.pop(0) if server._embedding_script else None
                if isinstance(action, Fail):
                    self._json(
                        action.status,
                        {"error": {"message": action.message, "type": action.error_type, "code": None}},
                        action.headers,
                    )
                    return
                if isinstance(action, Stall):
                    server._stopping.wait(action.seconds)
                    self.close_connection = True
                    return
                model = body.get("model")
                if model not in server.embedding_models:
                    self._invalid(f"The model `{model}` does not exist or you do not have access to it.", 404, "model_not_found")
                    return
                texts = body.get("input")
                if isinstance(texts, str):
                    texts = [texts]
                if not isinstance(texts, list) or not texts or not all(isinstance(t, str) for t in texts):
                    self._invalid("'input' must be a string or a non-empty list of strings (token arrays are not supported here)")
                    return
                if len(texts) > 2048 or any(not t for t in texts):
                    self._invalid("'$.input' is invalid: at most 2048 inputs, none of them empty")
                    return
                dimensions = body.get("dimensions", EMBEDDING_DIMENSIONS)
                if not isinstance(dimensions, int) or not 1 <= dimensions <= 4096:
                    self._invalid("'dimensions' must be an integer between 1 and 4096")
                    return
                encoding = body.get("encoding_format") or "float"
                if encoding not in ("float", "base64"):
                    self._invalid("'encoding_format' must be 'float' or 'base64'")
                    return
                data = []
                for index, text in enumerate(texts):
                    vector = hashed_embedding(text, dimensions)
                    embedding: list[float] | str = (
                        base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode() if encoding == "base64" else vector
                    )
                    data.append({"object": "embedding", "index": index, "embedding": embedding})
                tokens = sum(count_tokens(t) for t in texts)
                self._json(
                    200,
                    {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                )

            def _usage(self, body: dict, text: str) -> dict:
                prompt = sum(count_tokens(str(m.get("content", ""))) for m in body.get("messages") or [])
                completion = count_tokens(text)
                return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

            def _whole(self, body: dict, action: Reply | Stall) -> None:
                if isinstance(action, Stall):
                    server._stopping.wait(action.seconds)
                    self.close_connection = True
                    return
                self._json(
                    200,
                    {
                        "id": f"chatcmpl-{time.time_ns()}",
                        "object": "chat.completion",
                        "created": int(time.time()),
                        "model": action.model or body.get("model") or server.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": action.text},
                                "finish_reason": action.finish_reason,
                            }
                        ],
                        "usage": self._usage(body, action.text),
                    },
                )

            def _event(self, payload: dict | str) -> None:
                data = payload if isinstance(payload, str) else json.dumps(payload)
                chunk = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(chunk):X}\r\n".encode() + chunk + b"\r\n")
                self.wfile.flush()

            def _stream(self, body: dict, action: Reply | Stall) -> None:
                text = action.text
                if isinstance(action, Reply) and action.chunks is not None:
                    pieces = action.chunks
                else:
                    words = text.split(" ")
                    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
                model = (action.model if isinstance(action, Reply) else None) or body.get("model") or server.model
                ident = f"chatcmpl-{time.time_ns()}"
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def chunk(delta: dict, finish: str | None = None) -> dict:
                    return {
                        "id": ident,
                        "object": "chat.completion.chunk",
                        "created": int(time.time()),
                        "model": model,
                        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
                    }

                try:
                    self._event(chunk({"role": "assistant", "content": ""}))
                    for i, piece in enumerate(pieces):
                        if isinstance(action, Stall) and i == action.after_chunks:
                            server._stopping.wait(action.seconds)
                            self.close_connection = True
                            return
                        if isinstance(action, Reply) and action.chunk_delay:
                            time.sleep(action.chunk_delay)
                        self._event(chunk({"content": piece}))
                    self._event(chunk({}, action.finish_reason))
                    if (body.get("stream_options") or {}).get("include_usage"):
                        self._event(
                            {
                                "id": ident,
                                "object": "chat.completion.chunk",
                                "created": int(time.time()),
                                "model": model,
                                "choices": [],
                                "usage": self._usage(body, text),
                            }
                        )
                    self._event("[DONE]")
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    # The client went away mid-stream (a cancelled or timed-out call).
                    self.close_connection = True

        return Handler


def main() -> None:  # pragma: no cover - manual use: python -m tests.servers.openai_compat
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = OpenAICompatServer(port=args.port).start()
    print(f"OPENAI_BASE_URL={server.base_url}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
