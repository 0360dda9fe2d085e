"""Chainlit's routes and socket events, guarded so that a client's bad request is answered as
one: a 4xx with a message, never a 500, and nothing stored is touched.

Chainlit 2.12's routes do not expect the data layer to refuse anything: `PUT /feedback`
turns any exception into a 500, the others let it through (a 500 from the server). Here a
`RequestError` from the data layer (a malformed id, cursor or page size; something missing
or another user's) is answered with its status (400 or 404) and message instead — raised
directly or as the cause of Chainlit's 500.

Chainlit's socket handlers index their payloads without checking them, so a forged event
ended in a traceback; here a malformed one is refused before Chainlit sees it, with a
WARNING naming the user, and the user is told (a toast). Malformed connection data is
refused at the handshake, as a connection error with the reason.

Chainlit's `/project/action` and `/mcp` routes use the socket session the request names
without checking it exists: an unknown one is answered 404 here (instead of a 500).

Two more guards Chainlit has no place for:

* `DELETE /feedback` answers 404 for a rating that does not exist (Chainlit answers success
  whatever happened), so a missing rating and another user's look the same to a client.
* A socket that connects with a thread id no database can hold (over `MAX_ID_LENGTH`
  characters, or with NUL) chats in a fresh thread instead: the user is told "Thread not
  found", as for any unknown thread, and what they write is saved — rather than answered and
  never stored.

`install(app)` is called once, at import of the app, before the server starts.
"""

# No `from __future__ import annotations`: FastAPI reads the route's annotations at runtime.
import functools
import json
import logging
import uuid
from typing import Any

import socketio
from fastapi import FastAPI, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response

from .errors import RequestError
from .writes import MAX_ID_LENGTH, is_valid_id

logger = logging.getLogger("chainlit").getChild("guards")


def _refusal(request: Request, exc: RequestError) -> JSONResponse:
    logger.info("%s %s refused with %d: %s", request.method, request.url.path, exc.status, exc)
    return JSONResponse({"detail": str(exc)}, status_code=exc.status)


async def on_request_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestError)
    return _refusal(request, exc)


async def on_http_exception(request: Request, exc: Exception) -> Response:
    """Chainlit's `raise HTTPException(500, str(e)) from e` around a data-layer call: the
    cause decides."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 500 and isinstance(exc.__cause__, RequestError):
        return _refusal(request, exc.__cause__)
    return await http_exception_handler(request, exc)


def _delete_feedback_route(app: FastAPI) -> None:
    from chainlit.data import get_data_layer
    from chainlit.server import UserParam
    from chainlit.types import DeleteFeedbackRequest

    async def delete_feedback(request: Request, payload: DeleteFeedbackRequest, current_user: UserParam):
        """Chainlit's `DELETE /feedback`, which also says when there was nothing to delete."""
        data_layer = get_data_layer()
        if not data_layer:
            raise HTTPException(status_code=400, detail="Data persistence is not enabled")
        if not await data_layer.delete_feedback(payload.feedbackId):
            raise HTTPException(status_code=404, detail="rating not found")
        return JSONResponse(content={"success": True})

    app.router.add_api_route("/feedback", delete_feedback, methods=["DELETE"], name="delete_feedback")
    # In front of Chainlit's own route of the same path and method, which would match first.
    app.router.routes.insert(0, app.router.routes.pop())


def auth_problem(auth: Any) -> str | None:
    """What is wrong with a socket's connection data, as Chainlit's `connect` reads it."""
    if not isinstance(auth, dict):
        return "it must be an object"
    if not isinstance(auth.get("sessionId"), str) or not auth["sessionId"] or not isinstance(auth.get("clientType"), str):
        return "sessionId and clientType must be text"
    for name in ("threadId", "chatProfile"):
        if auth.get(name) is not None and not isinstance(auth[name], str):
            return f"{name} must be text"
    user_env = auth.get("userEnv")
    if user_env:
        try:
            if not isinstance(user_env, str) or not isinstance(json.loads(user_env), dict):
                raise ValueError
        except ValueError:
            return "userEnv must be a JSON object"
    return None


def _guard_socket_connect() -> None:
    from chainlit.data import get_data_layer
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    chainlit_connect = sio.handlers["/"]["connect"]

    def owned_by_its_user(session: Any) -> None:
        """The session's thread id is a fresh random one Chainlit or this guard chose: the
        data layer knows its owner, and reads nothing when the first message is saved."""
        owners = getattr(get_data_layer(), "owners", None)
        if owners is not None and session.user is not None:
            owners.remember(session.thread_id, session.user.identifier)

    async def connect(sid: str, environ: dict, auth: Any = None):
        if problem := auth_problem(auth):
            logger.warning("refused a socket connection with malformed data: %s", problem)
            raise socketio.exceptions.ConnectionRefusedError(f"malformed connection data: {problem}")
        accepted = await chainlit_connect(sid, environ, auth)
        session = WebsocketSession.get(sid) if accepted else None
        if session is None or session.restored:
            return accepted
        thread_id = auth.get("threadId")
        if not thread_id:  # a new chat
            owned_by_its_user(session)
        elif not is_valid_id(thread_id):
            # Still resumed (so the user is told it was not found), but written elsewhere.
            session.thread_id = str(uuid.uuid4())
            owned_by_its_user(session)
            logger.warning("socket of user %r asked for thread id %r… (%d characters; at most %d, no NUL): "
                           "chatting in new thread %s", getattr(session.user, "identifier", None),
                           thread_id[:40], len(thread_id), MAX_ID_LENGTH, session.thread_id)
        return accepted

    sio.on("connect", connect)


#: Step fields Chainlit copies from a client's message into columns of at most MAX_ID_LENGTH.
SHORT_FIELDS = ("name", "type", "language", "command", "parentId")


def payload_problem(event: str, payload: Any) -> str | None:
    """What is wrong with a client's payload for `event` (None: nothing), checking exactly
    what Chainlit's handler reads from it without checking."""
    if event in ("chat_settings_change", "chat_settings_edit"):
        return None if isinstance(payload, dict) else "the settings must be an object"
    step = payload.get("message") if isinstance(payload, dict) else None
    if not isinstance(step, dict):
        return "the payload needs a message object"
    if not isinstance(step.get("id"), str) or not is_valid_id(step["id"]):
        return f"the message needs an id of at most {MAX_ID_LENGTH} characters, without NUL"
    if event == "message_favorite":
        return None if isinstance(step.get("metadata"), dict | None) else "the message's metadata must be an object"
    if not isinstance(step.get("output"), str):
        return "the message's text must be a string"
    if event == "edit_message":
        return None
    try:
        if uuid.UUID(step["id"]).version != 4:
            raise ValueError
    except ValueError:
        return "a new message's id must be a random UUID"
    if "createdAt" not in step:
        return "the message needs createdAt"
    for field in SHORT_FIELDS:
        value = step.get(field)
        if value is not None and (not isinstance(value, str) or len(value) > MAX_ID_LENGTH):
            return f"the message's {field} must be text of at most {MAX_ID_LENGTH} characters"
    references = payload.get("fileReferences")
    if references is not None and not (isinstance(references, list)
                                       and all(isinstance(r, dict) and isinstance(r.get("id"), str)
                                               for r in references)):
        return "fileReferences must be a list of objects with an id"
    return None


def _guard_socket_payloads() -> None:
    from chainlit.context import init_ws_context
    from chainlit.server import sio
    from chainlit.session import WebsocketSession

    def guarded(event: str, chainlit_handler: Any) -> Any:
        async def handler(sid: str, payload: Any = None, *args: Any) -> Any:
            problem = payload_problem(event, payload)
            if problem is None:
                return await chainlit_handler(sid, payload, *args)
            session = WebsocketSession.get(sid)
            logger.warning("refused a malformed %s from user %r: %s", event,
                           getattr(getattr(session, "user", None), "identifier", None), problem)
            if session is not None:
                await init_ws_context(session).emitter.send_toast(f"Not sent: {problem}.", "error")
            return None

        handler.__name__ = f"checked_{event}"
        return handler

    for event in ("client_message", "edit_message", "message_favorite", "chat_settings_change",
                  "chat_settings_edit"):
        sio.on(event, guarded(event, sio.handlers["/"][event]))


def _session_checked_routes(app: FastAPI) -> None:
    """Chainlit's `/project/action` and `/mcp` routes use the socket session a request names
    without checking that it exists (a 500 when it does not): answer 404 first. An action
    Chainlit cannot build is a 400."""
    import chainlit.server as chainlit_server
    from chainlit.action import Action
    from chainlit.session import WebsocketSession

    def checked(handler: Any) -> Any:
        @functools.wraps(handler)  # FastAPI reads the parameters of Chainlit's own handler
        async def endpoint(**kwargs: Any) -> Any:
            payload = kwargs["payload"]
            if WebsocketSession.get_by_id(payload.sessionId) is None:
                raise HTTPException(status_code=404, detail="session not found: reload the page")
            if handler is chainlit_server.call_action:
                try:
                    Action(**payload.action)
                except (TypeError, ValueError) as exc:
                    raise HTTPException(status_code=400, detail=f"invalid action: {exc}") from None
            return await handler(**kwargs)

        return endpoint

    for path, method, handler in (("/project/action", "POST", chainlit_server.call_action),
                                  ("/mcp", "POST", chainlit_server.connect_mcp),
                                  ("/mcp", "DELETE", chainlit_server.disconnect_mcp)):
        app.router.add_api_route(path, checked(handler), methods=[method], name=f"checked_{handler.__name__}")
        app.router.routes.insert(0, app.router.routes.pop())  # in front of Chainlit's own


def install(app: FastAPI) -> None:
    app.add_exception_handler(RequestError, on_request_error)
    app.add_exception_handler(StarletteHTTPException, on_http_exception)
    _delete_feedback_route(app)
    _session_checked_routes(app)
    _guard_socket_connect()
    _guard_socket_payloads()
