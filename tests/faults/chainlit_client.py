"""A client of Chainlit's own socket protocol, without a browser: logs in over HTTP, connects
a python-socketio client the way Chainlit's frontend does, sends user messages and waits for
the assistant's replies.

What the frontend does (Chainlit 2.12's react client), and so what this client does:
* `POST /login` (form `username`, `password`) sets the `access_token` cookie; the socket
  handshake carries that cookie, and the server authenticates the connection from it.
* the socket lives at `/ws/socket.io`; the auth payload is `clientType`, `sessionId` (a uuid
  chosen by the client), `threadId` ("" for a new chat, or the thread to resume), `userEnv`
  (a JSON string) and `chatProfile`;
* once connected it emits `connection_successful` (the server then starts the chat);
* a message is the `client_message` event `{"message": step, "fileReferences": [...]}` where
  the step has a uuid4 `id` (the server asserts the version), `threadId: ""`, `type:
  "user_message"`, `name` (the user's identifier), `output`, `createdAt` and `metadata`;
* the server answers with `task_start`, the reply (`stream_start`, `stream_token`..., then
  `new_message` with the final step) and `task_end`.

Every event the server sends is recorded, in order and per event name, so a test can look
for anything the app shows besides the reply (a notice that saving is delayed, a toast).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import socketio

SOCKET_PATH = "/ws/socket.io"
STEP_EVENTS = ("stream_start", "new_message", "update_message")


@dataclass
class Turn:
    """One user message and the app's answer to it, as the user saw them."""

    number: int
    user_id: str
    user_text: str
    reply_id: str | None = None
    reply_text: str | None = None
    reply_author: str | None = None
    thread_id: str | None = None
    seconds: float = 0.0
    # Other messages the server showed during this turn (not the user's, not the reply).
    notices: list[dict] = field(default_factory=list)


@dataclass
class Event:
    at: float  # time.monotonic()
    name: str
    data: Any


class ChainlitClient:
    def __init__(self, base_url: str, cookies: dict[str, str], identifier: str):
        self.base_url = base_url.rstrip("/")
        self.cookies = cookies
        self.identifier = identifier
        self.session_id = str(uuid.uuid4())
        self.events: list[Event] = []
        self.by_name: dict[str, list[Any]] = {}
        self.turns: list[Turn] = []
        self.thread_id: str | None = None
        self._changed = asyncio.Condition()
        self._sio: socketio.AsyncClient | None = None

    # ------------------------------------------------------------------ connecting
    @classmethod
    async def login(cls, base_url: str, username: str, password: str) -> ChainlitClient:
        async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
            response = await http.post("/login", data={"username": username, "password": password})
            assert response.status_code == 200, f"login as {username!r} failed: {response.status_code} {response.text}"
            # Chainlit splits a long token over access_token_0, _1...: keep every cookie.
            cookies = dict(http.cookies.items())
        assert any(name.startswith("access_token") for name in cookies), f"no access token cookie in {cookies}"
        return cls(base_url, cookies, username)

    async def connect(self, thread_id: str | None = None, timeout: float = 30,
                      wait_for_chat_start: bool = True) -> None:
        """Open the socket like the frontend; `thread_id` resumes a stored thread."""
        self._sio = socketio.AsyncClient(reconnection=False)
        self._sio.on("*", self._record)
        cookie = "; ".join(f"{name}={value}" for name, value in self.cookies.items())
        mark = len(self.events)
        await self._sio.connect(
            self.base_url,
            headers={"Cookie": cookie},
            auth={
                "clientType": "webapp",
                "sessionId": self.session_id,
                "threadId": thread_id or "",
                "userEnv": json.dumps({}),
                "chatProfile": "",
            },
            socketio_path=SOCKET_PATH,
            wait_timeout=timeout,
        )
        await self._sio.emit("connection_successful")
        # The server answers connection_successful with a task_end, then runs on_chat_start
        # (or on_chat_resume) as a task of its own, wrapped in task_start/task_end. A message
        # sent before that task ends would race with it, as it cannot in the browser (the
        # composer stays disabled while a task runs).
        await self.wait_for(lambda: self._names_since(mark, "task_end"), timeout, "the server to accept the session")
        if thread_id:
            self.thread_id = thread_id
            resumed = ("resume_thread", "resume_thread_error")
            await self.wait_for(lambda: [e for e in self.events[mark:] if e.name in resumed],
                                timeout, f"thread {thread_id} to be resumed")
        elif wait_for_chat_start:
            first_end = next(i for i in range(mark, len(self.events)) if self.events[i].name == "task_end")
            await self.wait_for(lambda: self._task_done(first_end + 1), timeout, "on_chat_start to finish")

    async def close(self) -> None:
        if self._sio is not None:
            try:
                await asyncio.wait_for(self._sio.disconnect(), 10)
            except (TimeoutError, OSError, socketio.exceptions.SocketIOError):
                pass  # the app may already be gone (a test killed it)
            self._sio = None

    @property
    def connected(self) -> bool:
        return self._sio is not None and self._sio.connected

    async def __aenter__(self) -> ChainlitClient:
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    # ------------------------------------------------------------------ events
    async def _record(self, event: str, *args: Any) -> None:
        data = args[0] if len(args) == 1 else list(args)
        self.events.append(Event(time.monotonic(), event, data))
        self.by_name.setdefault(event, []).append(data)
        if event in STEP_EVENTS and isinstance(data, dict) and data.get("threadId"):
            self.thread_id = self.thread_id or data["threadId"]
        if event == "first_interaction" and isinstance(data, dict) and data.get("thread_id"):
            self.thread_id = self.thread_id or data["thread_id"]
        async with self._changed:
            self._changed.notify_all()

    def _names_since(self, mark: int, name: str) -> list[Any]:
        return [e.data for e in self.events[mark:] if e.name == name]

    def _task_done(self, mark: int) -> bool:
        """A task started after `mark` and every task started since has ended. Tasks nest:
        a message is wrapped by the socket handler and again by the callback wrapper."""
        names = [e.name for e in self.events[mark:]]
        starts = names.count("task_start")
        return starts > 0 and names.count("task_end") >= starts

    async def wait_for(self, predicate, timeout: float, what: str):
        """Wait until `predicate()` is truthy (re-checked on every event) and return it."""
        deadline = time.monotonic() + timeout
        async with self._changed:
            while not (result := predicate()):
                left = deadline - time.monotonic()
                if left <= 0:
                    names = [e.name for e in self.events[-15:]]
                    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last events: {names}")
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
                except TimeoutError:
                    pass
        return result

    def messages(self) -> dict[str, dict]:
        """Every step the server showed, by id, in its latest form."""
        steps: dict[str, dict] = {}
        for event in self.events:
            if event.name in STEP_EVENTS and isinstance(event.data, dict) and event.data.get("id"):
                steps[event.data["id"]] = {**steps.get(event.data["id"], {}), **event.data}
        return steps

    def notices(self) -> list[dict]:
        """Messages the server showed that are neither a user message nor a turn's reply,
        plus toasts (as `{"toast": ...}`). Chainlit's own callback steps (type `run`:
        on_chat_start, on_message) are not notices."""
        known = {t.user_id for t in self.turns} | {t.reply_id for t in self.turns}
        shown = [m for i, m in self.messages().items() if i not in known and m.get("type") != "run"]
        return shown + [{"toast": data} for data in self.by_name.get("toast", [])]

    # ------------------------------------------------------------------ chatting
    async def send(self, text: str, timeout: float = 60) -> Turn:
        """Send `text` as the user and wait until the app has finished answering it."""
        assert self._sio is not None and self._sio.connected, "not connected"
        turn = Turn(number=len(self.turns) + 1, user_id=str(uuid.uuid4()), user_text=text)
        step = {
            "threadId": "",
            "id": turn.user_id,
            "name": self.identifier,
            "type": "user_message",
            "output": text,
            "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
            "metadata": {"location": f"{self.base_url}/"},
        }
        mark = len(self.events)
        started = time.monotonic()
        await self._sio.emit("client_message", {"message": step, "fileReferences": []})

        await self.wait_for(lambda: self._task_done(mark), timeout, f"the answer to turn {turn.number}")
        turn.seconds = time.monotonic() - started
        self._read_reply(turn, mark)
        turn.thread_id = self.thread_id
        self.turns.append(turn)
        return turn

    def _read_reply(self, turn: Turn, mark: int) -> None:
        streamed: list[str] = []
        shown: dict[str, dict] = {}
        for event in self.events[mark:]:
            data = event.data
            if event.name not in STEP_EVENTS or not isinstance(data, dict) or not data.get("id"):
                continue
            if event.name == "stream_start" and data.get("type") == "assistant_message":
                streamed.append(data["id"])
            shown[data["id"]] = {**shown.get(data["id"], {}), **data}
        # The model's answer is streamed; anything else the app says in the meantime is not.
        candidates = [i for i in streamed if i in shown] or [
            i for i, s in shown.items() if s.get("type") == "assistant_message"
        ]
        if candidates:
            reply = shown[candidates[-1]]
            turn.reply_id = reply["id"]
            turn.reply_text = reply.get("output")
            turn.reply_author = reply.get("name")
        turn.notices = [s for i, s in shown.items()
                        if i not in (turn.reply_id, turn.user_id) and s.get("type") != "run"]
