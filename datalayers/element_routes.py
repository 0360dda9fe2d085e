"""Chainlit's element routes (`PUT` and `DELETE /project/element`), checked before they run.

Chainlit 2.12 lets any logged-in user update or delete an element by id through their own
socket session; it only checks that the session is the caller's. The data layer refuses a
write by id to another user's element (`Attachments.check_write`), but Chainlit saves an
updated element in a background task and queues a delete made before the session's first
message, so neither refusal would reach the client: it would be told `success`. Here the
same check runs first, and a refusal is answered at once — `NotYours` as 404, like a missing
element (the app's `RequestError` handler), a malformed element as 400.

`install(app)` is called once, at import of the app, before the server starts; it fails
loudly if Chainlit's routes are not where this module expects them.
"""

# No `from __future__ import annotations`: FastAPI reads the routes' annotations at runtime.
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute

from .actor import request_user
from .errors import RequestError
from .writes import check_id

#: The fields Chainlit's handlers read from a custom element without checking them.
_REQUIRED = ("id", "name", "display")


async def check_element_request(element: Any, identifier: str | None) -> None:
    """Raise `RequestError` (400) for an element Chainlit would choke on, `NotYours` (404)
    for one the user may not write. Elements Chainlit ignores (not `custom`) pass."""
    from chainlit.data import get_data_layer

    if not isinstance(element, dict) or element.get("type") != "custom" or identifier is None:
        return  # Chainlit answers these itself: {"success": false}, or 401 without a user
    missing = [name for name in _REQUIRED if not isinstance(element.get(name), str)]
    if missing:
        raise RequestError(f"the element needs {', '.join(missing)} (text)")
    check_id(element["id"], "element id")
    thread_id = element.get("threadId")
    if thread_id is not None and not isinstance(thread_id, str):
        raise RequestError("the element's threadId must be text")
    data_layer = get_data_layer()
    check = getattr(data_layer, "check_element_write", None)
    if check is None:
        return
    token = request_user.set(identifier)
    try:
        await check(element["id"], thread_id or None)
    finally:
        request_user.reset(token)


def _guarded(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    from chainlit.server import UserParam
    from chainlit.types import ElementRequest

    async def endpoint(payload: ElementRequest, current_user: UserParam):
        await check_element_request(payload.element, getattr(current_user, "identifier", None))
        return await handler(payload, current_user)

    endpoint.__name__ = f"checked_{handler.__name__}"
    endpoint.__doc__ = handler.__doc__
    return endpoint


def install(app: FastAPI) -> None:
    """Put checked versions of Chainlit's two element routes in front of Chainlit's own."""
    import chainlit.server as chainlit_server

    handlers = {"PUT": chainlit_server.update_thread_element, "DELETE": chainlit_server.delete_thread_element}
    for method, handler in handlers.items():
        original = next((route for route in chainlit_server.router.routes
                         if isinstance(route, APIRoute) and route.endpoint is handler and method in (route.methods or ())),
                        None)
        if original is None:
            raise RuntimeError(f"Chainlit's {method} /project/element route was not found: the element "
                               "ownership check cannot be installed (has Chainlit changed?)")
        app.router.add_api_route(original.path, _guarded(handler), methods=[method], name=f"checked_{original.name}")
        # At the front: Chainlit's route of the same path and method would match first.
        app.router.routes.insert(0, app.router.routes.pop())
