"""`DynamoDBDataLayer`: the data layer on one DynamoDB table, async (aioboto3). The shared
rules live in `datalayers.base`; this module is the database work, one `_` method per
operation (the item layout: `items.py`; step writes: `steps.py`; the sidebar:
`sidebar.py`).

Nothing blocks the event loop; every AWS error is raised as `DynamoDBError` naming the
operation and ids; no Scan anywhere (except the one-off `upgrade` command).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import aioboto3
from botocore.config import Config
from chainlit.logger import logger as chainlit_logger
from chainlit.types import Feedback, ThreadDict
from chainlit.user import PersistedUser

from storage.base import ObjectNotFound

from ..actor import current_session_thread
from ..base import PersistentDataLayer
from ..timestamps import utc_now
from ..writes import StepWrite, ThreadWrite, merge_changes
from .api_tokens import DynamoDBApiTokens
from .client import TABLE_NAME, Conflict, DynamoDBError, Table, parse_dynamodb_url, retry_conflicts
from .failures import failure_kind
from .feedback import set_step_feedback, step_delete_items
from .items import (
    BLOBS,
    DEFAULT_INLINE_LIMIT,
    MAX_ITEM_BYTES,
    TEXT,
    TEXT_BYTES,
    TEXT_SINCE,
    Expression,
    activity_sort_key,
    deserialize,
    element_key,
    feedback_id_for,
    locator_key,
    parse_feedback_id,
    public,
    remove_prefix,
    serialize,
    step_key,
    storable,
    thread_key,
    user_key,
)
from .large import LargeAttributes, put_versioned
from .listing import DynamoDBListing
from .provision import TEMPLATE_PATH, check_table_description, provision_table
from .search import DigestMemory
from .sessions import DynamoDBSessionRevocations
from .sidebar import Sidebar, step_dict
from .steps import StepWrites

if TYPE_CHECKING:
    from storage.base import BlobStorage

#: Users whose id <-> identifier this process remembers (they never change once written).
USER_CACHE_SIZE = 10_000


class DynamoDBDataLayer(DynamoDBListing, DynamoDBApiTokens, DynamoDBSessionRevocations, PersistentDataLayer):
    """Chainlit data layer on one DynamoDB table. Public constructor; or `from_url`."""

    logger = chainlit_logger.getChild("DynamoDB")

    def __init__(
        self,
        table_name: str,
        *,
        region: str | None = None,
        endpoint_url: str | None = None,
        storage: BlobStorage | None = None,
        auto_migrate: bool = False,
        cursor_secret: bytes | None = None,
        client: Any = None,
        verify_table: bool = True,
        inline_limit: int = DEFAULT_INLINE_LIMIT,
        template: Path = TEMPLATE_PATH,
        retry_mode: str = "adaptive",
        max_attempts: int = 6,
        max_concurrency: int = 8,
        journal=None,
        read_wait: float = 5.0,
    ):
        if not TABLE_NAME.match(table_name):
            raise ValueError(f"invalid DynamoDB table name {table_name!r}")
        if not 1024 <= inline_limit <= MAX_ITEM_BYTES - 32 * 1024:
            raise ValueError("inline_limit must be between 1 KB and 368 KB")
        # Without a secret from the settings, cursors survive restarts through Chainlit's own.
        secret = cursor_secret or (os.environ.get("CHAINLIT_AUTH_SECRET") or "").encode() or None
        # A lane applies one request at a time: more lanes at once than requests in flight
        # would only queue on the bound.
        super().__init__(storage=storage, cursor_secret=secret, journal=journal, read_wait=read_wait,
                         write_concurrency=max_concurrency)
        self.table_name = table_name
        self.region = region
        self.endpoint_url = endpoint_url
        self.auto_migrate = auto_migrate
        self.verify_table = verify_table
        self.inline_limit = inline_limit
        self.template = template
        # No client-side parameter validation: the layer builds every request itself, DynamoDB
        # validates them anyway, and botocore's check costs ~1.5 ms of event-loop CPU for a
        # step's transaction — the largest share of the loop stalls under many sessions.
        self._config = Config(retries={"mode": retry_mode, "max_attempts": max_attempts}, max_pool_connections=64,
                              parameter_validation=False)
        self.table = Table(table_name, self._new_client_context, client=client,
                           prepare=self._prepare if (auto_migrate or verify_table) else None,
                           max_concurrency=max_concurrency, logger=self.logger)
        self.large = LargeAttributes(storage, inline_limit, self.logger)
        self.digests = DigestMemory()
        # identifier -> user id, the reverse of the base's cache: a step write gives an
        # ownerless thread its owner's id without reading the user.
        self._user_ids: OrderedDict[str, str] = OrderedDict()
        self.steps = StepWrites(self.table, self.large, self.digests, self.logger,
                                owner_id=self._cached_user_id, delete_blobs=self._delete_blobs)
        self.sidebar = Sidebar(self.table, self.large)

    @classmethod
    def from_url(cls, url: str, *, storage=None, auto_migrate: bool = False, **kwargs) -> DynamoDBDataLayer:
        options = parse_dynamodb_url(url)
        return cls(str(options["table"]), region=options["region"], endpoint_url=options["endpoint_url"],
                   storage=storage, auto_migrate=auto_migrate, **kwargs)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(table={self.table_name!r}, region={self.region!r}, "
                f"endpoint_url={self.endpoint_url!r})")

    # ------------------------------------------------------------------ plumbing
    def _new_client_context(self):
        session = aioboto3.Session()
        return session.client("dynamodb", region_name=self.region, endpoint_url=self.endpoint_url, config=self._config)

    async def _prepare(self, client) -> None:
        if self.auto_migrate:
            await provision_table(client, self.table_name, self.template)
        else:
            check_table_description((await client.describe_table(TableName=self.table_name))["Table"])

    async def provision(self) -> bool:
        """Create the table from the template if missing (see `provision_table`)."""
        created = await provision_table(await self.table.open(), self.table_name, self.template)
        self.table.mark_ready()
        return created

    def _failure_kind(self, exc: BaseException) -> str | None:
        return failure_kind(exc)

    async def _close(self) -> None:
        await self.table.close()

    # ------------------------------------------------------------------ users
    def _cache_user(self, user_id: str, identifier: str) -> None:
        self._identifiers[user_id] = identifier
        self._user_ids[identifier] = user_id
        self._user_ids.move_to_end(identifier)
        while len(self._user_ids) > USER_CACHE_SIZE:
            self._user_ids.popitem(last=False)
        while len(self._identifiers) > USER_CACHE_SIZE:
            self._identifiers.pop(next(iter(self._identifiers)))

    def _cached_user_id(self, identifier: str | None) -> str | None:
        return self._user_ids.get(identifier) if identifier else None

    def _persisted_user(self, item: dict[str, Any]) -> PersistedUser:
        self._cache_user(item["id"], item["identifier"])
        metadata = item.get("metadata") or {}
        return PersistedUser(
            id=item["id"], identifier=item["identifier"], createdAt=item.get("createdAt") or "", metadata=metadata,
            display_name=metadata.get("display_name") if isinstance(metadata, dict) else None,
        )

    async def _get_user(self, identifier: str) -> PersistedUser | None:
        item = await self.table.get(user_key(identifier), "get_user", {"identifier": identifier})
        return self._persisted_user(item) if item else None

    async def _upsert_user(self, identifier: str, metadata: dict) -> PersistedUser:
        ids = {"identifier": identifier}
        # One atomic upsert: concurrent first logins agree on one id, and later logins
        # refresh the metadata without touching id or createdAt.
        e = Expression()
        update = (
            f"SET {e.name('identifier')} = {e.value(identifier)}, {e.name('metadata')} = {e.value(metadata)}, "
            f"{e.name('id')} = if_not_exists({e.name('id')}, {e.value(str(uuid.uuid4()))}), "
            f"{e.name('createdAt')} = if_not_exists({e.name('createdAt')}, {e.value(utc_now())})"
        )
        response = await self.table.call("update_item", "create_user", ids, TableName=self.table_name,
                                         Key=serialize(user_key(identifier)), UpdateExpression=update,
                                         ReturnValues="ALL_NEW", **e.kwargs())
        item = deserialize(response["Attributes"])
        # Idempotent; written on every login so an interrupted first login heals itself.
        await self.table.call("put_item", "create_user", ids, TableName=self.table_name,
                              Item=serialize({**locator_key("USERID", item["id"]), "identifier": identifier}))
        return self._persisted_user(item)

    async def _user_identifier(self, user_id: str | None, journaled: bool = False) -> str | None:
        """The identifier of a persisted user id. Users written by Chainlit's layer have
        id == identifier and no locator item."""
        if not user_id:
            return None
        if user_id in self._identifiers:
            return self._identifiers[user_id]
        ids = {"user_id": user_id}
        locator = await self.table.get(locator_key("USERID", user_id), "user lookup", ids, journaled=journaled)
        identifier = locator.get("identifier") if locator else None
        if identifier is None:
            legacy = await self.table.get(user_key(user_id), "user lookup", ids, attributes=("id", "identifier"),
                                          journaled=journaled)
            if legacy and legacy.get("id") == user_id:
                identifier = legacy.get("identifier")
        if identifier:
            self._cache_user(user_id, identifier)
        return identifier

    async def _user_id(self, identifier: str | None) -> str | None:
        """The id of a user by identifier (a thread owned through a step write may have
        only the identifier)."""
        if not identifier:
            return None
        if identifier not in self._user_ids:
            user = await self.table.get(user_key(identifier), "user lookup", {"identifier": identifier},
                                        attributes=("id", "identifier"))
            if not user or not user.get("id"):
                return None
            self._cache_user(user["id"], identifier)
        return self._user_ids[identifier]

    # ------------------------------------------------------------------ journaled writes
    async def _write_step(self, write: StepWrite, actor: str | None) -> None:
        await self.steps.write(write, actor)

    async def _write_steps(self, writes: list[StepWrite], actor: str | None) -> None:
        await self.steps.write_many(writes, actor)

    async def _write_thread(self, write: ThreadWrite, actor: str | None) -> None:
        """update_thread: read, change, write back conditional on `_rev` (large metadata
        moved to blob storage). The owner is set once and never replaced."""
        ids = {"thread_id": write.id}
        identifier = None
        if write.user_id is not None:
            identifier = await self._user_identifier(write.user_id, journaled=True)
            if identifier is None:
                raise ValueError(f"update_thread: unknown user id {write.user_id!r}")

        async def attempt() -> list[str]:
            old = await self.table.get(thread_key(write.id), "update_thread", ids, journaled=True)
            old_blobs: dict[str, str] = {}
            if old is None:
                at = write.at
                item: dict[str, Any] = {**thread_key(write.id), "id": write.id, "createdAt": at, "updatedAt": at,
                                        "UserThreadSK": activity_sort_key(at, write.id),
                                        "metadata": merge_changes({}, write.metadata),
                                        TEXT: [], TEXT_BYTES: 0, TEXT_SINCE: at}
            else:
                old, old_blobs = await self.large.hydrate(old)
                item = dict(old)
                if write.metadata is not None:
                    item["metadata"] = merge_changes(old.get("metadata"), write.metadata)
            if write.name is not None:
                item["name"] = write.name
            if write.tags is not None:
                item["tags"] = list(write.tags)
            if identifier is not None:
                owner = item.get("userIdentifier") or remove_prefix(item.get("UserThreadPK"), "USER#")
                if not owner and not item.get("userId"):
                    item.update(userId=write.user_id, userIdentifier=identifier, UserThreadPK=f"USER#{identifier}")
                elif owner == identifier and not item.get("userId"):
                    item["userId"] = write.user_id  # owned through a step write, id not known then
            if old is not None and item == old:
                return []
            return await put_versioned(self.table, self.large, "update_thread", ids, item, old, old_blobs,
                                       owner=item.get("userIdentifier") or actor, thread_id=write.id,
                                       label="thread", journaled=True)

        replaced = await retry_conflicts("update_thread", ids, attempt, self.logger)
        await self._delete_blobs(replaced, write.id)

    async def _remove_step(self, step_id: str, thread_hint: str | None) -> list[str]:
        thread_id = await self._locate_step(step_id, thread_hint, journaled=True)
        if thread_id is None or (thread_hint and thread_id != thread_hint):
            return []  # not in the thread the delete was checked against
        ids = {"step_id": step_id, "thread_id": thread_id}

        async def attempt() -> list[str]:
            step = await self.table.get(step_key(thread_id, step_id), "delete_step", ids, journaled=True)
            if step is None:
                return []
            try:
                await self.table.transact(await step_delete_items(self.table, thread_id, step_id, step, True),
                                          "delete_step", ids, journaled=True)
            except DynamoDBError as exc:
                if exc.is_conflict:
                    raise Conflict() from exc
                raise
            return list((step.get(BLOBS) or {}).values())

        blob_keys = await retry_conflicts("delete_step", ids, attempt, self.logger)

        def for_this_step(e: Expression) -> str:
            return f"{e.name('forId')} = {e.value(step_id)}"

        elements = await self.table.partition(thread_id, "delete_step", "ELEMENT#",
                                              attributes=("PK", "SK", "objectKey", BLOBS),
                                              filter_expression=for_this_step, journaled=True)
        keys = [locator_key("STEP", step_id)]
        for element in elements:
            keys += [{"PK": element["PK"], "SK": element["SK"]},
                     locator_key("ELEMENT", remove_prefix(element["SK"], "ELEMENT#") or "")]
            blob_keys += [element.get("objectKey"), *(element.get(BLOBS) or {}).values()]
        await self.table.batch_delete(keys, "delete_step", ids, journaled=True)
        return [k for k in blob_keys if k]

    async def _write_element(self, row: dict, actor: str | None) -> list[str]:
        thread_id, element_id = row["threadId"], row["id"]
        ids = {"element_id": element_id, "thread_id": thread_id}
        item = {**storable(row), **element_key(thread_id, element_id)}
        stored, uploaded = await self.large.offload(item, actor, thread_id, f"element-{element_id}", {}, {})
        try:
            # Locator first: if the element write then fails, a stray locator is harmless.
            await self.table.call("put_item", "create_element", ids, journaled=True, TableName=self.table_name,
                                  Item=serialize({**locator_key("ELEMENT", element_id), "threadId": thread_id}))
            response = await self.table.call("put_item", "create_element", ids, journaled=True,
                                             TableName=self.table_name, Item=serialize(stored), ReturnValues="ALL_OLD")
        except BaseException as exc:
            await self.large.forget_uploads(exc, uploaded, "create_element")
            raise
        previous = deserialize(response.get("Attributes") or {})
        kept = {stored.get("objectKey"), *(stored.get(BLOBS) or {}).values()}
        replaced = [previous.get("objectKey"), *(previous.get(BLOBS) or {}).values()]
        return [k for k in replaced if k and k not in kept]

    async def _remove_element(self, element_id: str, thread_id: str | None) -> list[str]:
        thread_id = thread_id or await self._element_thread(element_id, journaled=True)
        if thread_id is None:
            return []
        ids = {"element_id": element_id, "thread_id": thread_id}
        item = await self.table.get(element_key(thread_id, element_id), "delete_element", ids,
                                    attributes=("objectKey", BLOBS), journaled=True)
        await self.table.batch_delete([element_key(thread_id, element_id), locator_key("ELEMENT", element_id)],
                                      "delete_element", ids, journaled=True)
        if not item:
            return []
        return [k for k in (item.get("objectKey"), *(item.get(BLOBS) or {}).values()) if k]

    async def _element_thread(self, element_id: str, journaled: bool = False) -> str | None:
        """The element's locator, else (elements written by Chainlit's layer) the session's
        thread if the element is there."""
        ids = {"id": element_id}
        locator = await self.table.get(locator_key("ELEMENT", element_id), "locate element", ids, journaled=journaled)
        if locator and locator.get("threadId"):
            return locator["threadId"]
        session_thread = current_session_thread()
        if session_thread and await self.table.get(element_key(session_thread, element_id), "locate element", ids,
                                                   attributes=("PK",), journaled=journaled):
            return session_thread
        return None

    # ------------------------------------------------------------------ threads
    async def _author(self, thread: dict[str, Any]) -> str | None:
        return thread.get("userIdentifier") or await self._user_identifier(thread.get("userId"))

    async def _thread_author(self, thread_id: str, journaled: bool = False) -> str | None:
        thread = await self.table.get(thread_key(thread_id), "get_thread_author", {"thread_id": thread_id},
                                      attributes=("userId", "userIdentifier"), journaled=journaled)
        if not thread:
            return None
        return thread.get("userIdentifier") or await self._user_identifier(thread.get("userId"), journaled)

    async def _read_thread(self, thread_id: str) -> ThreadDict | None:
        for attempt in range(2):
            try:
                return await self._read_thread_once(thread_id)
            except ObjectNotFound:
                # A concurrent write replaced a blob between our query and its read: the
                # item now points at a new one. Read again once.
                if attempt:
                    raise
        return None

    async def _read_thread_once(self, thread_id: str) -> ThreadDict | None:
        items = await self.table.partition(thread_id, "get_thread")
        thread = next((i for i in items if i["SK"] == "THREAD"), None)
        if thread is None:
            return None
        hydrated = await asyncio.gather(*(self.large.hydrate(i) for i in items))
        steps, elements = [], []
        for item, _ in hydrated:
            if remove_prefix(item["SK"], "STEP#") is not None:
                steps.append(step_dict(item))
            elif remove_prefix(item["SK"], "ELEMENT#") is not None:
                elements.append(public(item))
        steps.sort(key=lambda s: (s.get("createdAt") is None, s.get("createdAt") or "", s.get("id") or ""))
        author = await self._author(thread)
        return cast(ThreadDict, {
            "id": thread_id, "createdAt": thread.get("createdAt"), "name": thread.get("name"),
            "userId": thread.get("userId") or await self._user_id(author), "userIdentifier": author,
            "tags": thread.get("tags"), "metadata": thread.get("metadata") or {}, "steps": steps, "elements": elements,
        })

    async def _read_element(self, thread_id: str, element_id: str) -> dict | None:
        ids = {"thread_id": thread_id, "element_id": element_id}
        item = await self.table.get(element_key(thread_id, element_id), "get_element", ids)
        if item is None:
            return None
        item, _ = await self.large.hydrate(item)
        return public(item)

    async def _page_threads(self, user_id: str, position: dict | None, limit: int, search: str | None,
                            feedback: int | None) -> list[tuple]:
        identifier = await self._user_identifier(user_id)
        if identifier is None:
            return []
        return await self.sidebar.page(user_id, identifier, position, limit, search, feedback)

    async def _favorite_steps(self, user_id: str) -> list[dict]:
        identifier = await self._user_identifier(user_id)
        if identifier is None:
            return []
        return await self.sidebar.favorites(user_id, identifier)

    async def _remove_thread(self, thread_id: str) -> list[str]:
        ids = {"thread_id": thread_id}
        self.digests.forget(thread_id)  # a later step write recreates it with the full update
        items = await self.table.partition(thread_id, "delete_thread", attributes=("PK", "SK", "objectKey", BLOBS))
        children: list[dict[str, str]] = []
        blob_keys: list[str] = []
        thread_item = None
        for item in items:
            key = {"PK": item["PK"], "SK": item["SK"]}
            blob_keys.extend((item.get(BLOBS) or {}).values())
            if item.get("objectKey"):
                blob_keys.append(item["objectKey"])
            if item["SK"] == "THREAD":
                thread_item = key
                continue
            children.append(key)
            for kind in ("STEP", "ELEMENT"):
                child_id = remove_prefix(item["SK"], f"{kind}#")
                if child_id is not None:
                    children.append(locator_key(kind, child_id))
        # Children first, the thread last: a failure half-way leaves a visible thread the
        # user can delete again, never invisible orphans.
        await self.table.batch_delete(children, "delete_thread", ids)
        if thread_item:
            await self.table.batch_delete([thread_item], "delete_thread", ids)
        return blob_keys

    # ------------------------------------------------------------------ feedback
    async def _step_thread(self, step_id: str, thread_hint: str | None) -> str | None:
        return await self._locate_step(step_id, thread_hint)

    async def _locate_step(self, step_id: str, thread_hint: str | None, journaled: bool = False) -> str | None:
        """The step's thread from its locator; a hint (the session's thread, a client-sent
        threadId) only when the step is really there (Chainlit's steps have no locator)."""
        ids = {"id": step_id}
        locator = await self.table.get(locator_key("STEP", step_id), "locate step", ids, journaled=journaled)
        if locator and locator.get("threadId"):
            return locator["threadId"]
        if thread_hint and await self.table.get(step_key(thread_hint, step_id), "locate step", ids,
                                                attributes=("PK",), journaled=journaled):
            return thread_hint
        return None

    async def _set_feedback(self, thread_id: str, feedback: Feedback) -> str:
        feedback_id = feedback_id_for(thread_id, feedback.forId)
        stored = {"id": feedback_id, "forId": feedback.forId, "threadId": thread_id,
                  "value": int(feedback.value), "comment": feedback.comment}
        if not await set_step_feedback(self.table, thread_id, feedback.forId, stored, "upsert_feedback", self.logger):
            raise ValueError(f"feedback for unknown step {feedback.forId!r} in thread {thread_id!r}")
        return feedback_id

    async def _feedback_thread(self, feedback_id: str) -> str | None:
        parsed = parse_feedback_id(feedback_id)
        if parsed is None:
            return None
        thread_id, step_id = parsed
        step = await self.table.get(step_key(thread_id, step_id), "delete_feedback", {"feedback_id": feedback_id},
                                    attributes=("feedback",))
        return thread_id if step and step.get("feedback") else None

    async def _remove_feedback(self, thread_id: str, feedback_id: str) -> bool:
        parsed = parse_feedback_id(feedback_id)
        if parsed is None:
            return False
        return await set_step_feedback(self.table, thread_id, parsed[1], None, "delete_feedback", self.logger)
