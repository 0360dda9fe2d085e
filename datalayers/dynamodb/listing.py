"""Listing users and threads on DynamoDB, for the export (`datalayers/listing.py`).

The table has no index over all users or all threads (every access path of the app is per
user or per thread), so a listing is a paged Scan filtered on the item kind (`SK = USER` /
`SK = THREAD`): one request per page of the table, items of other kinds filtered out on
the server. An export reads the whole table anyway; a per-user listing uses the
`UserThread` index instead (one Query page per request). Mixed into `DynamoDBDataLayer`.
"""

from __future__ import annotations

from typing import Any

from .items import INDEX_NAME, Expression, deserialize, remove_prefix

THREAD_ATTRIBUTES = ("id", "userIdentifier", "UserThreadPK", "createdAt", "updatedAt", "name", "tags", "metadata")


def _thread_row(item: dict[str, Any]) -> dict[str, Any]:
    owner = item.get("userIdentifier") or remove_prefix(item.get("UserThreadPK"), "USER#")
    return {"id": item["id"], "userIdentifier": owner or None, "createdAt": item.get("createdAt"),
            "updatedAt": item.get("updatedAt") or item.get("createdAt"), "name": item.get("name"),
            "tags": item.get("tags"), "metadata": item.get("metadata")}


class DynamoDBListing:
    table: Any
    table_name: str

    async def _scan_page(self, operation: str, kind: str, position: Any, limit: int, attributes: tuple[str, ...],
                         since: str | None = None) -> tuple[list[dict[str, Any]], Any]:
        e = Expression()
        condition = f"{e.name('SK')} = {e.value(kind)}"
        if since is not None:
            condition += f" AND {e.name('updatedAt')} >= {e.value(since)}"
        kwargs: dict[str, Any] = {"TableName": self.table_name, "FilterExpression": condition, "Limit": limit,
                                  "ProjectionExpression": e.names_of(attributes), "ConsistentRead": True}
        if position is not None:
            kwargs["ExclusiveStartKey"] = position
        response = await self.table.call("scan", operation, {}, **kwargs, **e.kwargs())
        return [deserialize(i) for i in response.get("Items", [])], response.get("LastEvaluatedKey")

    async def _list_users(self, position: Any, limit: int) -> tuple[list[dict[str, Any]], Any]:
        items, position = await self._scan_page("list_users", "USER", position, limit,
                                                ("id", "identifier", "metadata", "createdAt"))
        rows = [{"id": i.get("id") or i["identifier"], "identifier": i["identifier"],
                 "metadata": i.get("metadata") or {}, "createdAt": i.get("createdAt")} for i in items]
        return rows, position

    async def _list_threads(self, position: Any, limit: int, user_id: str | None,
                            since: str | None) -> tuple[list[dict[str, Any]], Any]:
        if user_id is None:
            items, position = await self._scan_page("list_threads", "THREAD", position, limit, THREAD_ATTRIBUTES,
                                                    since)
            return [_thread_row(i) for i in items], position
        e = Expression()
        kwargs: dict[str, Any] = {"TableName": self.table_name, "IndexName": INDEX_NAME, "Limit": limit,
                                  "KeyConditionExpression": f"{e.name('UserThreadPK')} = {e.value('USER#' + user_id)}"}
        if since is not None:  # the index's sort key starts with the activity time
            kwargs["KeyConditionExpression"] += f" AND {e.name('UserThreadSK')} >= {e.value('TS#' + since)}"
        if position is not None:
            kwargs["ExclusiveStartKey"] = position
        response = await self.table.call("query", "list_threads", {"user": user_id}, **kwargs, **e.kwargs())
        rows = []
        for item in map(deserialize, response.get("Items", [])):
            row = _thread_row(item)
            # The index projects no updatedAt: it is the time in the sort key.
            row["updatedAt"] = item.get("updatedAt") or str(item.get("UserThreadSK", "TS#"))[3:].rsplit("#", 1)[0]
            rows.append(row)
        return rows, response.get("LastEvaluatedKey")
