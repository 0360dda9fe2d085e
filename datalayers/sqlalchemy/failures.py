"""Which database failures are worth retrying: the journal retries transient ones (the
server is down, restarting, locked or overloaded) for as long as they last, and refuses
permanent ones (the database rejected this input) at once."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from sqlalchemy.exc import (
    DataError,
    DBAPIError,
    DisconnectionError,
    IntegrityError,
    InterfaceError,
    OperationalError,
    ProgrammingError,
)
from sqlalchemy.exc import (
    TimeoutError as PoolTimeout,
)

from ..writeback import PERMANENT, TRANSIENT

# MySQL/MariaDB: deadlock, lock wait timeout, too many connections, server gone or
# unreachable, lost connection, server shutting down, read-only during failover.
MYSQL_TRANSIENT = {1213, 1205, 1040, 1053, 2002, 2003, 2006, 2013, 2055, 1290, 1836}
# PostgreSQL SQLSTATE classes/codes: connection exceptions (08), insufficient resources
# (53), operator intervention (57: shutdown, crash, cannot connect now), serialization
# failure and deadlock (40001, 40P01).
POSTGRES_TRANSIENT_CLASSES = ("08", "53", "57")
POSTGRES_TRANSIENT_CODES = {"40001", "40P01"}
SQLITE_TRANSIENT_TEXT = ("database is locked", "database is busy", "disk i/o error", "unable to open database")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    pending = [exc]
    while pending:
        current = pending.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        pending.extend([current.__cause__, current.__context__, getattr(current, "orig", None)])  # type: ignore[list-item]


def failure_kind(exc: BaseException) -> str | None:
    for error in _chain(exc):
        if isinstance(error, DBAPIError) and error.connection_invalidated:
            return TRANSIENT
        if isinstance(error, (DisconnectionError, PoolTimeout, InterfaceError)):
            return TRANSIENT
        sqlstate = getattr(error, "sqlstate", None) or getattr(error, "pgcode", None)
        if isinstance(sqlstate, str) and (sqlstate.startswith(POSTGRES_TRANSIENT_CLASSES)
                                          or sqlstate in POSTGRES_TRANSIENT_CODES):
            return TRANSIENT
        args = getattr(error, "args", ())
        if args and isinstance(args[0], int) and args[0] in MYSQL_TRANSIENT:
            return TRANSIENT
        if isinstance(error, (ConnectionError, TimeoutError, socket.gaierror, OSError)):
            return TRANSIENT
        if any(text in str(error).lower() for text in SQLITE_TRANSIENT_TEXT):
            return TRANSIENT
    for error in _chain(exc):
        if isinstance(error, (IntegrityError, DataError, ProgrammingError)):
            return PERMANENT
        if isinstance(error, OperationalError):
            return None  # unrecognised operational trouble: retried a few times, then refused
    return None
