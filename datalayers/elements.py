"""Elements (attachments) and their blobs: the rules every data layer shares for them
(`PersistentDataLayer` delegates its element methods to `Attachments`).

* Ownership: an element write by id — create (also over an existing id), update, delete —
  is refused (`NotYours`, answered like a missing element) unless the acting user owns the
  thread it names and the thread the element is stored in. Checked before anything is
  stored; when the database cannot be asked (an outage), the write is journaled and checked
  when it is applied instead.
* The type an upload declared is client input: it is stored in its clean form, or as
  `application/octet-stream` when it does not parse (`storage/content_types.py`), and an
  element whose stored type no longer fits its kind (an "image" that is not an image) is
  kept as a plain file.
* A failed save leaves nothing behind and is reported where it matters: an ERROR naming
  the thread, element, user and reason, and a notice in the user's chat (Chainlit saves
  files in a background task, so otherwise nobody would know). A failed blob upload is not
  retried: the bytes live only in the session's temporary upload, which Chainlit removes
  with the session, the storage SDKs already retry transient errors, and a user who is told
  at once can attach the file again.
* Blobs whose rows are gone are deleted at once; if the store fails, the delete is
  journaled in a lane of its own and retried, with a backoff, until done — through
  restarts, without holding up any thread's writes or reads.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
from typing import TYPE_CHECKING, Any

from storage.base import BlobStorage, InvalidObjectKey, StorageAccessDenied, element_object_key
from storage.content_types import normalize_media_type

from .actor import current_session_thread, current_user_identifier
from .errors import NotYours, RequestError
from .journal import Entry
from .writeback import PERMANENT
from .writes import check_id

logger = logging.getLogger("chainlit")

if TYPE_CHECKING:
    from chainlit.element import Element

    from .base import PersistentDataLayer

# Chainlit picks the element kind from the declared type by substring ("image" in it); a
# kind whose stored type does not match is shown as a file instead.
_KIND_TYPES = {"image": "image/", "audio": "audio/", "video": "video/", "pdf": "application/pdf"}


async def element_content(element: Element) -> bytes | None:
    """The bytes to store for an element, or None when it only points at an external URL."""
    if element.content is not None and element.content != b"" and element.content != "":
        content = element.content
        return content.encode("utf-8") if isinstance(content, str) else bytes(content)
    if element.path:
        path = element.path

        def read() -> bytes:
            with open(path, "rb") as fh:
                return fh.read()

        return await asyncio.to_thread(read)
    return None


async def upload_element(storage: BlobStorage | None, element: Element, owner: str | None) -> str | None:
    """Write the element's blob (before its row is written) and return its object key.

    Returns None for elements that only reference an external URL. Raises when content
    exists but cannot be stored: a missing attachment must be an error, not a silent gap.
    The element's `mime` becomes the type stored (also what Chainlit shows from now on).
    """
    content = await element_content(element)
    if content is None:
        if not element.url:
            raise ValueError(f"element {element.id} has no content, path or url to store")
        if element.mime:
            element.mime = normalize_media_type(element.mime)
        return None
    if storage is None:
        raise RuntimeError(f"element {element.id} has content but no storage client is configured")
    element.mime = normalize_media_type(element.mime)
    key = element_object_key(owner, element.thread_id, element.id, element.name)
    await storage.upload_file(key, content, mime=element.mime, overwrite=True)
    return key


def element_row(element: Element, object_key: str | None) -> dict[str, Any]:
    """The element as stored: Chainlit's dict without Nones, the object key instead of a URL
    (read URLs are signed on every read, never stored)."""
    row = {k: v for k, v in dict(element.to_dict()).items() if v is not None}
    if object_key is not None:
        row["objectKey"] = object_key
        row.pop("url", None)
        expected = _KIND_TYPES.get(str(row.get("type") or ""))
        if expected and not str(row.get("mime", "")).startswith(expected):
            row["type"] = "file"
    row.setdefault("name", "")
    return row


async def sign_element_urls(storage: BlobStorage | None, element_dicts: list[dict]) -> None:
    """Fill each element's `url` with a freshly signed read URL (URLs are never stored)."""
    keyed = [e for e in element_dicts if e.get("objectKey")]
    if not keyed or storage is None:
        return

    async def sign(element_dict: dict) -> str:
        if _signs_with_type(type(storage)):  # the link also fixes type and disposition
            return await storage.get_read_url(element_dict["objectKey"], mime=element_dict.get("mime"))
        return await storage.get_read_url(element_dict["objectKey"])

    urls = await asyncio.gather(*(sign(e) for e in keyed), return_exceptions=True)
    for element_dict, url in zip(keyed, urls, strict=True):
        if isinstance(url, BaseException):
            # One unsignable attachment (storage down, key gone) must not hide the whole
            # conversation: the element is listed without a link and the failure logged.
            if not isinstance(url, Exception):
                raise url
            logger.warning("could not sign a read link for element %s of thread %s (%s): %s",
                           element_dict.get("id"), element_dict.get("threadId"), type(url).__name__, url)
            element_dict["url"] = None
        else:
            element_dict["url"] = url


@functools.cache
def _signs_with_type(storage_class: type[Any]) -> bool:
    """Whether `get_read_url` takes the stored type: ours do; a client written to Chainlit's
    `get_read_url(object_key)` (or a subclass overriding it so) is called that way."""
    try:
        return "mime" in inspect.signature(storage_class.get_read_url).parameters
    except (TypeError, ValueError):
        return False


# ---------------------------------------------------------------------- failed uploads
def failure_reason(exc: BaseException) -> str:
    """What the user is told about a failed save: the kind of failure, never a server path."""
    if isinstance(exc, StorageAccessDenied):
        return "the file store refused to write it"
    if isinstance(exc, PermissionError):
        return "you may not attach files to this conversation"
    if isinstance(exc, ValueError):
        return "it was not a valid attachment"
    return "the file store could not be reached or could not write it"


async def report_unsaved(element: Element, actor: str | None, exc: BaseException) -> None:
    """Log a failed attachment save with its context and tell the user in their chat."""
    # A refused request (not the user's thread, a bad id) is the client's doing, not a fault.
    level = logging.WARNING if isinstance(exc, RequestError) else logging.ERROR
    logger.log(level, "attachment %r (element %s) of thread %s by %s was not saved: %s: %s", element.name, element.id,
               element.thread_id, actor or "unknown user", type(exc).__name__, exc)
    _mark_background_failure_reported()
    try:
        await _tell_user(element, failure_reason(exc))
    except Exception as notice_error:  # the ERROR above is the report; the notice is a courtesy
        logger.warning("could not tell the user that attachment %s was not saved: %s", element.id, notice_error)


async def _tell_user(element: Element, reason: str) -> None:
    """A notice in the chat of the session that sent the file (not stored: the file is not
    part of the conversation), and the file taken out of the message it was shown with."""
    from chainlit.context import context
    from chainlit.message import ErrorMessage
    from chainlit.session import WebsocketSession

    try:
        session = context.session
    except Exception:  # no Chainlit context: a script or a test; the log has it all
        return
    if not isinstance(session, WebsocketSession):
        return
    name = element.name or "file"
    notice = ErrorMessage(
        author="Attachments",
        content=f"⚠️ The file “{name}” was not saved: {reason}. It is not part of this conversation "
                f"and will be gone after a reload; please attach it again.",
    )
    await context.emitter.send_step(notice.to_dict())
    await context.emitter.emit("remove_element", {"id": element.id})


def _mark_background_failure_reported() -> None:
    """Chainlit saves an element in a task nobody awaits (`asyncio.create_task(
    data_layer.create_element(...))`); asyncio would then log the same failure a second
    time, with no context, as "Task exception was never retrieved". When this code runs as
    that task, its exception is marked as retrieved: it has been reported above. An awaited
    call is left alone (its caller gets the exception)."""
    task = asyncio.current_task()
    if task is None or not getattr(task.get_coro(), "__qualname__", "").endswith(".create_element"):
        return

    def retrieve(done: asyncio.Task) -> None:
        if not done.cancelled():
            done.exception()

    task.add_done_callback(retrieve)


# ---------------------------------------------------------------------- the shared rules
#: Journal lane of blob deletes that failed: one lane for all, so a storage outage holds at
#: most one of the journal's workers, and no thread's writes or reads wait behind it.
BLOB_CLEANUP_LANE = "(blob cleanup)"
#: Cleanup entries act for nobody: a user's sidebar waits for the pending writes of its
#: actor and of entries without one, and must not wait for these.
CLEANUP_ACTOR = ""
#: Longest wait between two attempts at a failing blob delete.
BLOB_RETRY_MAX_SECONDS = 60.0
#: A failing blob delete is logged at WARNING on its first failure and every this many after.
_WARN_EVERY = 20


class Attachments:
    """Element writes, their ownership checks and their blobs, for one data layer."""

    def __init__(self, layer: PersistentDataLayer):
        self.layer = layer
        self.retry_first_seconds = 1.0

    @property
    def storage(self) -> BlobStorage | None:
        return self.layer.storage

    # ---------------------------------------------------------------- ownership
    async def _foreign_thread(self, element_id: str, thread_id: str | None, actor: str,
                              journaled: bool) -> str | None:
        """The thread named by the write, or holding the stored element, that `actor` does
        not own; None when both are theirs (or new, or ownerless)."""
        stored = await self.layer._element_thread(element_id, journaled)
        for candidate in dict.fromkeys(t for t in (thread_id, stored) if t):
            owner = await self.layer._thread_author(candidate, journaled)
            if owner and owner != actor:
                return candidate
        return None

    def _refused(self, actor: str, action: str, element_id: str, thread_id: str) -> NotYours:
        logger.warning("refused: user %r may not %s element %s of thread %s, which another user owns; "
                       "nothing changed", actor, action, element_id, thread_id)
        return NotYours(f"element {element_id} not found")

    async def check_write(self, element_id: str, thread_id: str | None, action: str) -> bool:
        """Raise `NotYours` when the acting user may not write this element; True when
        checked, False when the database cannot be asked now (check again when applying).
        Nobody acting (scripts, tests): allowed."""
        actor = current_user_identifier()
        if actor is None:
            return True
        try:
            # A pending write of the element or its thread may be what decides the owner.
            lanes = [lane for lane in (self.layer.writes.pending_lane("element", element_id), thread_id) if lane]
            if lanes:
                await self.layer.writes.settle(lanes, self.layer.read_wait)
            foreign = await self._foreign_thread(element_id, thread_id, actor, journaled=True)
        except Exception as exc:
            if self.layer._classify(exc) == PERMANENT:
                raise
            logger.info("the owner of element %s cannot be checked now (%s); it is checked when the write is "
                        "applied", element_id, type(exc).__name__)
            return False
        if foreign is not None:
            raise self._refused(actor, action, element_id, foreign)
        return True

    async def _refused_when_applied(self, entry: Entry, action: str) -> bool:
        """For a write journaled unchecked: True (and logged) when its user may not make it."""
        if entry.payload.get("checked", True) or not entry.actor:
            return False
        thread_id = entry.payload.get("threadId") if entry.kind == "element_delete" else entry.lane
        foreign = await self._foreign_thread(entry.payload["id"], thread_id or None, entry.actor, journaled=True)
        if foreign is None:
            return False
        self._refused(entry.actor, action, entry.payload["id"], foreign)
        return True

    # ---------------------------------------------------------------- writes
    async def create(self, element: Element) -> None:
        """Check, store the blob, journal the row; a failure is reported and leaves nothing."""
        check_id(element.id, "element id")
        check_id(element.thread_id, "element threadId")
        actor = current_user_identifier()
        try:
            checked = await self.check_write(element.id, element.thread_id, "attach files to")
            owner = actor or await self.layer.get_thread_author(element.thread_id) or None
            object_key = await upload_element(self.storage, element, owner)
        except Exception as exc:
            await report_unsaved(element, actor, exc)
            raise
        payload: dict[str, Any] = {"id": element.id, "row": element_row(element, object_key)}
        if not checked:
            payload["checked"] = False
        try:
            await self.layer._submit(element.thread_id, "element", payload)
        except Exception as exc:
            if object_key:
                await self.discard_upload(object_key, element.thread_id, element.id)
            await report_unsaved(element, actor, exc)
            raise

    async def delete(self, element_id: str, thread_id: str | None) -> None:
        check_id(element_id, "element id")
        if thread_id:
            check_id(thread_id, "element threadId")
        checked = await self.check_write(element_id, thread_id or None, "delete")
        payload: dict[str, Any] = {"id": element_id, "threadId": thread_id}
        if not checked:
            payload["checked"] = False
        lane = thread_id or self.layer.writes.pending_lane("element", element_id) or current_session_thread() or ""
        await self.layer._submit(lane, "element_delete", payload)

    async def apply_write(self, entry: Entry) -> None:
        row = entry.payload["row"]
        if await self._refused_when_applied(entry, "attach files to"):
            if row.get("objectKey"):
                await self.discard_upload(row["objectKey"], entry.lane, entry.payload["id"])
            return
        await self.delete_blobs(await self.layer._write_element(row, entry.actor), entry.lane)

    async def apply_delete(self, entry: Entry) -> bool:
        """Apply a journaled element delete; False when it was refused (not the user's)."""
        if await self._refused_when_applied(entry, "delete"):
            return False
        payload = entry.payload
        await self.delete_blobs(await self.layer._remove_element(payload["id"], payload.get("threadId")), entry.lane)
        return True

    # ---------------------------------------------------------------- blobs
    async def delete_blobs(self, keys: list[str], thread_id: str) -> None:
        """Delete blobs whose rows are gone. A failure is journaled and retried until done,
        so the row change (already committed) is never undone or repeated for it."""
        keys = [k for k in keys if k]
        if not keys or self.storage is None:
            return
        try:
            await self.storage.delete_files(keys)
        except Exception as exc:
            logger.warning("%d blob(s) of thread %s could not be deleted yet (%s: %s); retrying until done",
                           len(keys), thread_id, type(exc).__name__, exc)
            await self._journal_cleanup({"keys": keys, "threadId": thread_id})

    async def discard_upload(self, key: str, thread_id: str, element_id: str) -> None:
        """Remove a blob uploaded for a row that was not written — unless a stored row of
        the element uses that key (the same file saved again over a good row). Done at once;
        journaled and retried until done if the database or the store fails meanwhile."""
        payload = {"keys": [key], "threadId": thread_id, "unlessUsedBy": element_id}
        try:
            keys = await self._unused([key], thread_id, element_id)
            if keys and self.storage is not None:
                await self.storage.delete_files(keys)
        except Exception as exc:
            logger.warning("the unsaved upload %s of thread %s could not be removed yet (%s: %s); retrying until done",
                           key, thread_id, type(exc).__name__, exc)
            await self._journal_cleanup(payload)

    async def _journal_cleanup(self, payload: dict[str, Any]) -> None:
        await self.layer.writes.submit(Entry(BLOB_CLEANUP_LANE, "blobs_delete", payload, CLEANUP_ACTOR))

    async def apply_cleanup(self, entry: Entry) -> None:
        """Delete the entry's blobs, retrying with a backoff until it works. It holds its
        lane (and one journal worker), never a thread's: nothing else waits for it."""
        payload = entry.payload
        thread_id = payload.get("threadId") or entry.lane
        delay, failures = self.retry_first_seconds, 0
        while True:
            try:
                keys = await self._unused(payload["keys"], thread_id, payload.get("unlessUsedBy"))
                if keys and self.storage is not None:
                    await self.storage.delete_files(keys)
            except InvalidObjectKey as exc:
                # No store can ever hold such a key: there is nothing to delete.
                logger.error("blob cleanup of thread %s skipped invalid key(s): %s", thread_id, exc)
                return
            except Exception as exc:
                failures += 1
                level = logging.WARNING if failures == 1 or failures % _WARN_EVERY == 0 else logging.DEBUG
                logger.log(level, "%d blob(s) of thread %s still could not be deleted (attempt %d, %s: %s); "
                           "next attempt in %.0f s", len(payload["keys"]), thread_id, failures, type(exc).__name__,
                           exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BLOB_RETRY_MAX_SECONDS)
                continue
            if failures:
                logger.info("%d blob(s) of thread %s deleted after %d failed attempt(s)", len(payload["keys"]),
                            thread_id, failures)
            return

    async def _unused(self, keys: list[str], thread_id: str, element_id: str | None) -> list[str]:
        if not element_id:
            return keys
        stored = await self.layer._read_element(thread_id, element_id)
        used = stored.get("objectKey") if stored else None
        return [k for k in keys if k != used]
