"""API tokens on DynamoDB: personal tokens, stored only as SHA-256 hashes. Two items each:

    item            PK                  SK                              attributes
    token           APITOKEN#{id}       APITOKEN                        id, userIdentifier, name, tokenHash,
                                                                        createdAt, tokenExpiresAt, lastUsedAt
    token listing   USER#{identifier}   APITOKEN#{createdAt}#{id}       id

* Authentication reads the token item: one strongly consistent GetItem by the id in the
  plaintext token, so a token created or revoked by any instance is seen at once.
* A user's list is one Query of the user's partition (`begins_with(SK, "APITOKEN#")`,
  newest first: `createdAt` is fixed-width text), then one BatchGetItem of the token items.
  The listing item holds only the id: the token item is the one place the values live, so
  recording a use (on the hot path of every API request, if throttled) stays one
  conditional UpdateItem, and nothing can drift between two copies. Listing is rare (the
  token page, the CLI) and costs the extra round trip. BatchGetItem reads are eventually
  consistent: a token item it does not see yet (created a moment ago) is read again with
  a consistent GetItem, and a last use may show up to a second late.
* Both items are written in one TransactWriteItems (neither exists yet: a duplicate id is
  refused) and deleted in one, conditioned on the token's owner being the caller.
* The USER# partition also holds the user item (`SK=USER`) and the session revocation
  (`SK=SESSIONS`); nothing queries that partition but this module, and these items carry
  no `UserThread` key, so the sidebar's index never sees them. The table's TTL attribute
  (`expiresAt`, for retention jobs) is not used: a token's expiry is `tokenExpiresAt`, and
  a TTL deleting one item of the pair would leave the other behind.

Mixed into `DynamoDBDataLayer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .client import DynamoDBError
from .items import Expression, serialize

if TYPE_CHECKING:
    from .client import Table

TOKEN_SK = "APITOKEN"
LISTING_PREFIX = "APITOKEN#"
#: `expiresAt` is the table's TTL attribute; a token keeps its expiry under its own name.
EXPIRES = "tokenExpiresAt"
TOKEN_ATTRIBUTES = ("id", "userIdentifier", "name", "tokenHash", "createdAt", EXPIRES, "lastUsedAt")


def token_key(token_id: str) -> dict[str, str]:
    return {"PK": f"APITOKEN#{token_id}", "SK": TOKEN_SK}


def listing_key(identifier: str, created_at: str, token_id: str) -> dict[str, str]:
    return {"PK": f"USER#{identifier}", "SK": f"{LISTING_PREFIX}{created_at}#{token_id}"}


def _row(item: dict[str, Any]) -> dict[str, Any]:
    """A token item as the base's row (`credentials.TOKEN_FIELDS`)."""
    return {"id": item["id"], "userIdentifier": item["userIdentifier"], "name": item["name"],
            "tokenHash": item["tokenHash"], "createdAt": item["createdAt"], "expiresAt": item.get(EXPIRES),
            "lastUsedAt": item.get("lastUsedAt")}


class DynamoDBApiTokens:
    """The data layer's `_create_api_token` … `_touch_api_token` on DynamoDB."""

    table: Table
    table_name: str

    async def _create_api_token(self, row: dict[str, str | None]) -> None:
        token_id, identifier, created_at = str(row["id"]), str(row["userIdentifier"]), str(row["createdAt"])
        item = {**token_key(token_id), **{k: v for k, v in row.items() if k != "expiresAt"},
                EXPIRES: row["expiresAt"]}
        new = "attribute_not_exists(PK)"
        await self.table.transact([
            {"Put": {"TableName": self.table_name, "Item": serialize(item), "ConditionExpression": new}},
            {"Put": {"TableName": self.table_name, "ConditionExpression": new,
                     "Item": serialize({**listing_key(identifier, created_at, token_id), "id": token_id})}},
        ], "create_api_token", {"token_id": token_id, "identifier": identifier})

    async def _get_api_token(self, token_id: str) -> dict[str, Any] | None:
        item = await self.table.get(token_key(token_id), "get_api_token", {"token_id": token_id},
                                    attributes=TOKEN_ATTRIBUTES)
        return _row(item) if item else None

    async def _listing(self, identifier: str, operation: str) -> list[dict[str, Any]]:
        """The user's listing items (keys and token id), newest first, strongly consistent."""
        e = Expression()
        condition = (f"{e.name('PK')} = {e.value(f'USER#{identifier}')} AND "
                     f"begins_with({e.name('SK')}, {e.value(LISTING_PREFIX)})")
        query = self.table.query(operation, {"identifier": identifier}, KeyConditionExpression=condition,
                                 ScanIndexForward=False, ConsistentRead=True,
                                 ProjectionExpression=e.names_of(("PK", "SK", "id")), **e.kwargs())
        return [item async for item in query]

    async def _list_api_tokens(self, identifier: str) -> list[dict[str, Any]]:
        ids = [item["id"] for item in await self._listing(identifier, "list_api_tokens")]
        if not ids:
            return []
        found = {item["id"]: item for item in await self.table.batch_get(
            [token_key(token_id) for token_id in ids], "list_api_tokens", attributes=TOKEN_ATTRIBUTES)}
        rows = []
        for token_id in ids:
            row = _row(found[token_id]) if token_id in found else await self._get_api_token(token_id)
            if row is not None:  # deleted since the query
                rows.append(row)
        return rows

    async def _delete_api_token(self, identifier: str, token_id: str) -> bool:
        ids = {"token_id": token_id, "identifier": identifier}
        item = await self.table.get(token_key(token_id), "delete_api_token", ids,
                                    attributes=("userIdentifier", "createdAt"))
        if item is None or item.get("userIdentifier") != identifier:
            return False  # another user's token is answered like a missing one
        e = Expression()
        try:
            await self.table.transact([
                {"Delete": {"TableName": self.table_name, "Key": serialize(token_key(token_id)),
                            "ConditionExpression": f"{e.name('userIdentifier')} = {e.value(identifier)}",
                            **e.kwargs()}},
                {"Delete": {"TableName": self.table_name,
                            "Key": serialize(listing_key(identifier, item["createdAt"], token_id))}},
            ], "delete_api_token", ids)
        except DynamoDBError as exc:
            if exc.is_conflict:  # deleted meanwhile
                return False
            raise
        return True

    async def _delete_api_tokens(self, identifier: str) -> int:
        # The pairs are written and deleted together, so every listed token is this user's.
        # One BatchWriteItem per 12 tokens instead of a transaction each (user removal).
        listed = await self._listing(identifier, "delete_api_tokens")
        keys = [key for item in listed for key in (token_key(item["id"]), {"PK": item["PK"], "SK": item["SK"]})]
        if keys:
            await self.table.batch_delete(keys, "delete_api_tokens", {"identifier": identifier})
        return len(listed)

    async def _touch_api_token(self, token_id: str, used_at: str) -> None:
        e = Expression()
        last = e.name("lastUsedAt")
        at = e.value(used_at)
        try:
            await self.table.call("update_item", "touch_api_token", {"token_id": token_id},
                                  TableName=self.table_name, Key=serialize(token_key(token_id)),
                                  UpdateExpression=f"SET {last} = {at}",
                                  ConditionExpression=f"attribute_exists({e.name('PK')}) AND "
                                                      f"(attribute_not_exists({last}) OR {last} < {at})",
                                  **e.kwargs())
        except DynamoDBError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            # The token is gone, or a later use is recorded already (another instance): fine.
