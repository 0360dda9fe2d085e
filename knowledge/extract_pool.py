"""Document extraction off the event loop: a pool of worker processes, with a time limit.

`extract_async` runs `knowledge.extract.extract` in a worker process (started on first use;
`close()` ends the pool). Where no process can be started (a sandbox without fork/exec), it
runs in a thread instead, and says so once in the log.

The time limit: a crafted document (a PDF whose objects point at each other in deep chains, a
page of millions of tiny drawing operations) can keep a parser busy for hours while the
upload looks stuck. Each worker arms a timer for its document; when it fires, the parser is
interrupted and the upload refused with a clear message, and the worker goes on serving. Should
a worker not answer its timer (stuck inside C code), the app stops waiting a little later,
kills the pool's processes and starts a new pool for the next document. In the thread fallback
no limit can be applied (a thread cannot be interrupted).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import multiprocessing
import signal
import sys
import threading
from collections.abc import Iterator
from concurrent.futures.process import BrokenProcessPool
from types import FrameType

from .extract import DEFAULT_MAX_PAGES, DEFAULT_MAX_UNZIPPED_BYTES, Document, ExtractionError, extract, logger

DEFAULT_TIME_LIMIT_SECONDS = 120.0
#: How much longer than the worker's own timer the app waits before it kills the worker.
KILL_GRACE_SECONDS = 15.0

_pool: concurrent.futures.ProcessPoolExecutor | None = None
_pool_failed = False
_pool_worked = False
_pool_lock = threading.RLock()
_in_flight = 0  # documents submitted and not yet done, across pools


def _get_pool(max_workers: int) -> concurrent.futures.ProcessPoolExecutor | None:
    global _pool, _pool_failed
    with _pool_lock:
        if _pool is None and not _pool_failed:
            try:
                # spawn: a fork of a process running an event loop and threads is unsafe.
                _pool = concurrent.futures.ProcessPoolExecutor(max_workers=max_workers, mp_context=multiprocessing.get_context("spawn"))
            except (OSError, NotImplementedError, ValueError) as exc:
                logger.warning("Document extraction runs in threads: no process pool (%s)", exc)
                _pool_failed = True
        return _pool


def _forget(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    global _pool
    with _pool_lock:
        if _pool is pool:
            _pool = None


async def extract_async(
    data: bytes,
    name: str,
    mime: str | None = None,
    *,
    max_pages: int = DEFAULT_MAX_PAGES,
    max_unzipped_bytes: int = DEFAULT_MAX_UNZIPPED_BYTES,
    max_workers: int = 1,
    time_limit: float = DEFAULT_TIME_LIMIT_SECONDS,
) -> Document:
    """`extract` in a worker process, refused with an `ExtractionError` after `time_limit` seconds."""
    global _pool_failed, _pool_worked
    pool = _get_pool(max_workers)
    if pool is not None:
        try:
            # submit() starts the worker processes when needed (fork+exec, tens of ms, more
            # on a loaded machine): it runs in a thread so the event loop never waits for it.
            future = await asyncio.to_thread(_submit, pool, data, name, mime, max_pages, max_unzipped_bytes, time_limit)
            document = await asyncio.wait_for(asyncio.wrap_future(future), _patience(future, max_workers, time_limit))
        except TimeoutError:
            _forget(pool)
            _kill(pool)
            logger.warning("Document extraction of %s did not stop at its %g s limit: its worker was killed", name, time_limit)
            raise ExtractionError(f"{name}: reading it took longer than {time_limit:g} s") from None
        except BrokenProcessPool as exc:
            _forget(pool)
            pool.shutdown(wait=False, cancel_futures=True)
            if _pool_worked:
                # A worker that worked before died on this document (killed for memory,
                # say): refuse the document rather than retry it inside the app's process.
                raise ExtractionError(f"{name}: the extraction process stopped ({exc})") from exc
            logger.warning("Document extraction runs in threads: the process pool cannot start (%s)", exc)
            _pool_failed = True
        except RuntimeError as exc:
            if "shutdown" not in str(exc):
                raise
            # close() ran between getting the pool and submitting to it: a thread this once.
        else:
            _pool_worked = True
            return document
    return await asyncio.to_thread(extract, data, name, mime, max_pages=max_pages, max_unzipped_bytes=max_unzipped_bytes)


def _submit(pool: concurrent.futures.ProcessPoolExecutor, *args) -> concurrent.futures.Future[Document]:
    global _in_flight
    with _pool_lock, _main_hidden():
        future = pool.submit(_extract_in_worker, *args)
        future.ahead = _in_flight  # type: ignore[attr-defined]
        _in_flight += 1
    future.add_done_callback(_one_done)
    return future


def _one_done(_future: concurrent.futures.Future) -> None:
    global _in_flight
    with _pool_lock:
        _in_flight -= 1


def _patience(future: concurrent.futures.Future, max_workers: int, time_limit: float) -> float:
    """How long the app waits for a document before it takes its worker for stuck. The
    worker's timer starts when the worker takes the document up, not at submission: each
    round of the documents queued ahead of it takes at most `time_limit` too (their own
    timers), so a document waiting its turn is not mistaken for a stuck one."""
    rounds = 1 + getattr(future, "ahead", 0) // max(1, max_workers)
    return rounds * time_limit + KILL_GRACE_SECONDS


def _kill(pool: concurrent.futures.ProcessPoolExecutor) -> None:
    # The executor has no way to stop one running task: its processes are ended (the other
    # documents they held fail as "the extraction process stopped"), the pool is dropped.
    processes = list(getattr(pool, "_processes", {}).values())
    for process in processes:
        with contextlib.suppress(ProcessLookupError, AttributeError):
            process.kill()
    pool.shutdown(wait=False, cancel_futures=True)


@contextlib.contextmanager
def _main_hidden() -> Iterator[None]:
    """Hide the main script's path while workers start. A spawned worker first re-runs the
    parent's main script (multiprocessing's "safe importing of the main module"); our workers
    need only this module, and under `chainlit run` the main script is Chainlit's CLI, which
    would import all of Chainlit into every worker (seconds, and about 100 MB each)."""
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not hasattr(main, "__file__"):
        yield  # started with -m (spawn imports by name, and skips `__main__` modules) or no file
        return
    path = main.__file__
    del main.__file__
    try:
        yield
    finally:
        main.__file__ = path


class _TimeUp(BaseException):
    """Raised into the parser by the worker's timer. A BaseException, so that a library's own
    `except Exception` cannot swallow it and carry on."""


def _time_up(signum: int, frame: FrameType | None) -> None:
    raise _TimeUp


def _extract_in_worker(data: bytes, name: str, mime: str | None, max_pages: int, max_unzipped_bytes: int,
                       time_limit: float) -> Document:
    """Runs in the worker process's main thread, where a signal timer can interrupt the parser."""
    previous = signal.signal(signal.SIGALRM, _time_up)
    try:
        try:
            signal.setitimer(signal.ITIMER_REAL, time_limit)
            return extract(data, name, mime, max_pages=max_pages, max_unzipped_bytes=max_unzipped_bytes)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except _TimeUp:  # also when it fired just as the document was done: the timer was due
        raise ExtractionError(f"{name}: reading it took longer than {time_limit:g} s") from None
    finally:
        signal.signal(signal.SIGALRM, previous)


def close() -> None:
    """Shut the worker pool down (the next `extract_async` starts a new one)."""
    global _pool
    with _pool_lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
