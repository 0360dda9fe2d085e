"""The message size limit: a message larger than `APP_MAX_MESSAGE_BYTES` is refused, with a
notice in the chat that gives its size and the limit, before Chainlit stores any of it.

Two things are needed for that, both set up by `MessageSizeGuard.install` on Chainlit's
socket.io server (no change inside Chainlit):

* The transport must carry a message over the limit at all. python-engineio drops the whole
  connection when one packet exceeds `max_http_buffer_size` (1 MB by default, which Chainlit
  does not change): the message was lost and the user was told nothing. The buffer is raised
  to what the largest allowed message can take once JSON-escaped, plus the step's envelope.
* Chainlit stores a user message (`Message._create`) as soon as its `client_message` handler
  runs, and an edited one in its `edit_message` handler; so the check wraps those handlers,
  and the originals only ever see messages within the limit.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

from chainlit.logger import logger as chainlit_logger

logger = chainlit_logger.getChild("MessageLimit")

#: JSON escapes a control character as `\\u00XX`: six characters for one byte of text, the
#: most any byte can grow on the way (the browser sends other text unescaped).
ESCAPED_CHARS_PER_BYTE = 6
#: Room for the rest of the step around its text: ids, author, timestamps, metadata.
ENVELOPE_BYTES = 64 * 1024
#: Chainlit's `run` starts uvicorn with its default largest websocket frame, which the app
#: cannot change; a larger buffer would never be used.
LARGEST_FRAME_BYTES = 16 * 1024 * 1024
GUARDED_EVENTS = ("client_message", "edit_message")

Handler = Callable[..., Awaitable[Any]]


def message_bytes(text: str) -> int:
    """The size of a message's text as stored: UTF-8 bytes (a lone surrogate, which a
    browser can send, counts as the three bytes it takes)."""
    return len(text.encode("utf-8", "surrogatepass"))


def socket_buffer_bytes(limit: int) -> int:
    """The engine.io packet size that lets every message up to `limit` bytes through."""
    needed = limit * ESCAPED_CHARS_PER_BYTE + ENVELOPE_BYTES
    if needed > LARGEST_FRAME_BYTES:
        raise ValueError(f"a limit of {limit} bytes needs {needed}-byte socket packets; the server takes {LARGEST_FRAME_BYTES}")
    return needed


def human_size(size: int) -> str:
    """`1.2 MB (1,258,291 bytes)`; binary units, as file managers show sizes."""
    exact = f"{size:,} bytes"
    if size < 1024:
        return exact
    value, unit = (size / (1024 * 1024), "MB") if size >= 1024 * 1024 else (size / 1024, "KB")
    return f"{value:.1f} {unit} ({exact})"


def refusal_text(size: int, limit: int, edited: bool, attachment_mb: int | None) -> str:
    what = "Your edit was not saved" if edited else "Your message was not sent"
    advice = "Shorten it"
    if attachment_mb:
        advice += f", or attach the text as a file instead (up to {attachment_mb} MB; the model reads text files)"
    return (
        f"**{what}: it is too large.** It is {human_size(size)}; the limit is {human_size(limit)}. "
        f"Nothing of it was stored. {advice}."
    )


def oversize(payload: Any, limit: int) -> int | None:
    """The text's size when the payload is a message over the limit, else None (anything
    malformed is left to Chainlit's own handling)."""
    step = payload.get("message") if isinstance(payload, Mapping) else None
    text = step.get("output") if isinstance(step, Mapping) else None
    if not isinstance(text, str) or len(text) * 4 <= limit:  # 4 bytes per character at most
        return None
    size = message_bytes(text)
    return size if size > limit else None


class MessageSizeGuard:
    def __init__(self, limit: int, attachment_mb: int | None = None):
        self.limit = limit
        self.attachment_mb = attachment_mb
        self.buffer_bytes = socket_buffer_bytes(limit)

    def install(self, sio: Any) -> None:
        """Raise the socket's packet size and wrap Chainlit's message handlers on `sio`."""
        sio.eio.max_http_buffer_size = max(sio.eio.max_http_buffer_size, self.buffer_bytes)
        for event in GUARDED_EVENTS:
            original = sio.handlers.get("/", {}).get(event)
            if original is None:  # a Chainlit without this event: nothing would store it
                raise RuntimeError(f"Chainlit registers no {event!r} socket handler; the message size limit cannot be enforced")
            sio.on(event, self._guarded(event, original))

    def _guarded(self, event: str, original: Handler) -> Handler:
        async def handler(sid: str, payload: Any, *args: Any) -> Any:
            size = oversize(payload, self.limit)
            if size is None:
                return await original(sid, payload, *args)
            await self.refuse(sid, event, payload["message"], size)
            return None

        handler.__name__ = f"size_limited_{event}"
        return handler

    async def refuse(self, sid: str, event: str, step: Mapping[str, Any], size: int) -> None:
        from chainlit.context import init_ws_context
        from chainlit.message import ErrorMessage
        from chainlit.session import WebsocketSession

        session = WebsocketSession.require(sid)
        context = init_ws_context(session)
        user = getattr(session.user, "identifier", None)
        logger.warning("refused a %s of %d bytes from user %r (limit %d bytes)", event, size, user, self.limit)
        edited = event == "edit_message"
        await context.emitter.task_start()
        try:
            if edited:
                await self._show_stored_version(context, str(step.get("id")))
            else:
                # The browser shows a message as soon as it is sent; it must not look saved.
                await context.emitter.delete_step(cast(Any, {"id": step.get("id")}))
            notice = ErrorMessage(content=refusal_text(size, self.limit, edited, self.attachment_mb))
            # Shown, not stored: the thread may not exist yet, and a reload then shows what is.
            notice.persisted = True
            await notice.send()
        finally:
            await context.emitter.task_end()

    @staticmethod
    async def _show_stored_version(context: Any, step_id: str) -> None:
        """The browser already shows the edited text; put the stored one back."""
        from chainlit.chat_context import chat_context

        for message in chat_context.get():
            if message.id == step_id:
                await context.emitter.update_step(message.to_dict())
                return
