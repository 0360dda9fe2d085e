"""Errors of the API as RFC 9457 problem documents (`application/problem+json`), and the
rules that turn the data layer's and the model's exceptions into the right status.

Every failure a client can cause is a 4xx with a reason; the database or the model being
unavailable is a 503 with `Retry-After`; nothing a client sends gives a 500.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse

from chat.providers import LLMError
from datalayers.errors import DataLayerError, NotFound, RequestError
from storage.base import StorageError

PROBLEM_TYPE = "application/problem+json"
TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    409: "Conflict", 413: "Content Too Large", 415: "Unsupported Media Type", 422: "Unprocessable Content",
    429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
}
RETRY_AFTER_SECONDS = 5


class Problem(Exception):
    """An error answered as a problem document."""

    def __init__(self, status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any):
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.extra = extra


def problem_response(status: int, detail: str, *, headers: dict[str, str] | None = None, **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": TITLES.get(status, "Error"), "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_TYPE, headers=headers)


def unavailable(what: str) -> Problem:
    return Problem(503, f"{what} is unavailable right now; try again shortly",
                   headers={"Retry-After": str(RETRY_AFTER_SECONDS)})


def as_problem(exc: BaseException) -> Problem | None:
    """The problem a known exception stands for (None: a bug, answered as 500 and logged)."""
    if isinstance(exc, Problem):
        return exc
    if isinstance(exc, BodyTooLarge):
        return Problem(413, f"the request body is larger than {exc.limit} bytes")
    if isinstance(exc, (NotFound, PermissionError)):  # another user's item is answered as missing
        return Problem(404, str(exc) or "not found")
    if isinstance(exc, RequestError):
        return Problem(400, str(exc))
    if isinstance(exc, LLMError):
        if exc.kind in ("bad_request", "not_found"):
            return Problem(422, exc.user_message)
        return unavailable("the model")
    if isinstance(exc, (DataLayerError, StorageError, ConnectionError, TimeoutError)):
        return unavailable("the database" if isinstance(exc, DataLayerError) else "storage")
    return None


def install_handlers(app: FastAPI, logger) -> None:
    async def on_problem(request: Request, exc: Exception):
        problem = as_problem(exc)
        if problem is None:
            logger.error("API %s %s failed", request.method, request.url.path, exc_info=exc)
            return problem_response(500, "internal error; it has been logged")
        if problem.status == 503:
            logger.warning("API %s %s: %s (%s)", request.method, request.url.path, problem.detail, exc)
        return problem_response(problem.status, problem.detail, headers=problem.headers, **problem.extra)

    async def on_http(request: Request, exc: StarletteHTTPException):
        return problem_response(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    async def on_validation(request: Request, exc: RequestValidationError):
        errors = [{"loc": [str(part) for part in error.get("loc", ())], "msg": str(error.get("msg", "")),
                   "type": str(error.get("type", ""))} for error in exc.errors()]
        return problem_response(422, "the request does not have the expected shape", errors=errors)

    app.add_exception_handler(StarletteHTTPException, on_http)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, on_validation)  # type: ignore[arg-type]
    # Each known kind by name: Starlette answers these without re-raising; a handler for
    # plain `Exception` would also answer, but re-raise into the server's error log.
    for kind in KNOWN:
        app.add_exception_handler(kind, on_problem)
    app.add_exception_handler(Exception, on_problem)


class BodyLimit:
    """413 for a body over `limit` bytes (multipart uploads: `upload_limit`), whether it
    declares its length or streams it; checked before the app reads it."""

    def __init__(self, app, *, limit: int, upload_limit: int):
        self.app = app
        self.limit = limit
        self.upload_limit = upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        multipart = headers.get(b"content-type", b"").startswith(b"multipart/")
        limit = self.upload_limit if multipart else self.limit
        declared = headers.get(b"content-length")
        too_large = problem_response(413, f"the request body is larger than {limit} bytes")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await too_large(scope, receive, send)
        received = 0
        started = False

        async def counting_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge:  # raised while the app was not reading through FastAPI's handlers
            if not started:
                await too_large(scope, receive, send)


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        super().__init__(f"body over {limit} bytes")
        self.limit = limit


KNOWN = (Problem, BodyTooLarge, NotFound, PermissionError, RequestError, LLMError, DataLayerError, StorageError,
         ConnectionError, TimeoutError)
