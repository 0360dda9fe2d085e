"""Session revocation on DynamoDB: when each user's login sessions were last ended.

One item per user, next to the user item in its partition:

    item              PK                  SK          attributes
    sessions          USER#{identifier}   SESSIONS    revokedAt, reason

Not an attribute of the user item: every login rewrites that item's metadata. Writes are
conditional so the stored time only moves forward (clocks of app instances and the CLI
differ a little); reads are strongly consistent, so a revocation written by any instance
is seen by the next check of every other one. Mixed into `DynamoDBDataLayer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .client import DynamoDBError
from .items import Expression, serialize

if TYPE_CHECKING:
    from .client import Table

SESSIONS_SK = "SESSIONS"


def sessions_key(identifier: str) -> dict[str, str]:
    return {"PK": f"USER#{identifier}", "SK": SESSIONS_SK}


class DynamoDBSessionRevocations:
    """The data layer's `_revoke_sessions` / `_sessions_revoked_at` on DynamoDB."""

    table: Table
    table_name: str

    async def _revoke_sessions(self, identifier: str, revoked_at: str, reason: str) -> None:
        e = Expression()
        update = f"SET {e.name('revokedAt')} = {e.value(revoked_at)}, {e.name('reason')} = {e.value(reason)}"
        condition = f"attribute_not_exists({e.name('revokedAt')}) OR {e.name('revokedAt')} < {e.value(revoked_at)}"
        try:
            await self.table.call("update_item", "revoke_sessions", {"identifier": identifier},
                                  TableName=self.table_name, Key=serialize(sessions_key(identifier)),
                                  UpdateExpression=update, ConditionExpression=condition, **e.kwargs())
        except DynamoDBError as exc:
            if exc.code != "ConditionalCheckFailedException":
                raise
            # A later revocation is stored already (another instance's clock is ahead): it stands.

    async def _sessions_revoked_at(self, identifier: str) -> str | None:
        item = await self.table.get(sessions_key(identifier), "sessions_revoked_at", {"identifier": identifier},
                                    attributes=("revokedAt",))
        return item.get("revokedAt") if item else None
