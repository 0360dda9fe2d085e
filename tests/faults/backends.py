"""The databases the outage tests run the app against, each with its way of failing.

A `Backend` knows the app's `DATABASE_URL` and extra environment, how to begin and end an
outage, and how long its outages must last to be outages at all. Blocking work (pg_ctl,
starting the lock holder) runs in a worker thread so the test's event loop, which carries
the chat socket, keeps running meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from .postgres_cluster import ThrowawayCluster
from .sqlite_lock import SQLiteLock

if TYPE_CHECKING:  # moto only where used, so a missing moto is reported by the moto_server fixture
    from .moto_outage import StoppableMotoServer

# The fake AWS credentials both the app and the test process use against moto; no real
# profile or config file may leak in.
AWS_TEST_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}

# An SQLite writer that finds the file locked waits up to its busy timeout (30 s in the data
# layer these tests were written against) and then fails. A lock that ends before that is a
# slow write, not an outage, so SQLite outages always outlast it.
SQLITE_MIN_OUTAGE_SECONDS = 35.0
# Likewise botocore retries a refused connection itself (the layer's adaptive mode: 6
# attempts, jittered exponential backoff capped at 20 s, about 15 s in all on average and 31 s
# at most): moto down for less than that mostly delays writes. 30 s makes the first writes
# of an outage fail.
DYNAMODB_MIN_OUTAGE_SECONDS = 30.0


class Backend:
    name = "?"
    min_outage_seconds = 0.0

    def __init__(self) -> None:
        self.database_url = ""
        self.app_env: dict[str, str] = {"DATABASE_AUTO_MIGRATE": "true"}
        self.outages: list[tuple[float, float]] = []  # (began, ended) in time.monotonic()

    def outage_seconds(self, wanted: float) -> float:
        return max(wanted, self.min_outage_seconds)

    def _begin(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    async def begin_outage(self) -> None:
        await asyncio.to_thread(self._begin)
        self.outages.append((time.monotonic(), 0.0))

    async def end_outage(self) -> None:
        await asyncio.to_thread(self._end)
        began, _ = self.outages[-1]
        self.outages[-1] = (began, time.monotonic())

    @contextlib.asynccontextmanager
    async def outage(self, seconds: float):
        """Down on entry; up again `seconds` after it went down (at once if the body fails)."""
        await self.begin_outage()
        began = self.outages[-1][0]
        failed = False
        try:
            yield began
        except BaseException:
            failed = True
            raise
        finally:
            if not failed:
                await asyncio.sleep(max(0.0, began + seconds - time.monotonic()))
            await self.end_outage()

    def close(self) -> None:
        """Release whatever this backend started (called even when a test failed)."""

    def describe(self) -> str:
        spans = ", ".join(f"{end - begin:.1f}s" for begin, end in self.outages)
        return f"{self.name} (outages: {spans or 'none'})"


class SQLiteBackend(Backend):
    """The app's SQLite file; an outage is another process holding BEGIN EXCLUSIVE."""

    name = "sqlite"
    min_outage_seconds = SQLITE_MIN_OUTAGE_SECONDS

    def __init__(self, folder: Path):
        super().__init__()
        self.path = folder / "app.db"
        self.database_url = f"sqlite+aiosqlite:///{self.path}"
        self.lock = SQLiteLock(self.path)

    def _begin(self) -> None:
        self.lock.acquire()

    def _end(self) -> None:
        self.lock.release()

    def close(self) -> None:
        self.lock.release()


class PostgresBackend(Backend):
    """A database on a throwaway cluster; an outage stops the whole server (`stop_mode`
    fast: sessions ended, clean shutdown; immediate: a crash, recovered at the next start)."""

    name = "postgresql"

    def __init__(self, stop_mode: str = "fast"):
        super().__init__()
        self.stop_mode = stop_mode
        self.cluster = ThrowawayCluster()
        try:
            self.cluster.init()
            self.cluster.start()
            self.database_url = self.cluster.create_database("chat")
        except BaseException:
            self.cluster.destroy()
            raise

    def _begin(self) -> None:
        self.cluster.stop(self.stop_mode)

    def _end(self) -> None:
        self.cluster.start()

    def close(self) -> None:
        self.cluster.destroy()


class DynamoDBDownBackend(Backend):
    """A table on the moto server; an outage stops the server (its tables survive)."""

    name = "dynamodb-down"
    min_outage_seconds = DYNAMODB_MIN_OUTAGE_SECONDS

    def __init__(self, moto: StoppableMotoServer):
        super().__init__()
        self.moto = moto
        self.table = f"faults_{uuid.uuid4().hex[:10]}"
        self.database_url = f"dynamodb://{self.table}?region=us-east-1&endpoint_url={moto.url}"
        self.app_env.update(AWS_TEST_ENV)

    def _begin(self) -> None:
        self.moto.stop()

    def _end(self) -> None:
        self.moto.start()

    def close(self) -> None:
        self.moto.start()  # the next test needs it


class DynamoDBFaultsBackend(Backend):
    """A table on moto reached through a `FaultProxy`; an outage answers every DynamoDB call
    with ThrottlingException (HTTP 400) and InternalServerError (HTTP 500) in turn."""

    name = "dynamodb-throttled"

    def __init__(self, moto: StoppableMotoServer, mode: str = "mixed"):
        from .moto_outage import FaultProxy

        super().__init__()
        self.mode = mode
        self.proxy = FaultProxy(moto.url)
        self.proxy.start()
        self.table = f"faults_{uuid.uuid4().hex[:10]}"
        self.database_url = f"dynamodb://{self.table}?region=us-east-1&endpoint_url={self.proxy.url}"
        self.app_env.update(AWS_TEST_ENV)

    def _begin(self) -> None:
        self.proxy.set_mode(self.mode)

    def _end(self) -> None:
        self.proxy.set_mode("pass")

    def close(self) -> None:
        self.proxy.stop()

    def describe(self) -> str:
        return f"{super().describe()}, proxy answered {dict(self.proxy.counts)}"


BACKENDS = ("sqlite", "postgresql", "dynamodb-down", "dynamodb-throttled")
