"""Errors every data layer raises. Each inherits the builtin a caller already catches."""

from __future__ import annotations


class DataLayerError(RuntimeError):
    """A database operation failed; the message says which one and on what ids."""


class RequestError(ValueError):
    """The caller's request is wrong: a malformed id, cursor, page size or value. It is
    answered with `status` (a 4xx) and the message; a journaled write is never retried."""

    status = 400


class NotFound(RequestError, LookupError):
    """What the request names does not exist."""

    status = 404


class NotYours(NotFound, PermissionError):
    """It belongs to another user. Answered exactly like a missing item (404), so a client
    cannot learn that another user's item exists; the log says which it was."""
