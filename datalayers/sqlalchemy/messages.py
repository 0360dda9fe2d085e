"""A page of a thread's messages on SQL: a keyset range on the `steps(threadId, createdAt)`
index (ordered as `get_thread` orders steps: by `createdAt`, steps without one last, then
by id), and the ratings and attachments of just those steps. Three indexed queries in one
transaction whatever the thread's length. Mixed into `SQLAlchemyDataLayer`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, case, or_, select
from sqlalchemy.ext.asyncio import AsyncConnection

from .schema import elements, feedbacks, steps

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ..messages import Position

UNDATED_LAST = case((steps.c.createdAt.is_(None), 1), else_=0)


def after(position: Position | None):
    """Rows after `position` in (undated last, createdAt, id) order."""
    if position is None:
        return None
    created, step_id = position
    if created is None:  # among the undated steps, which come last
        return and_(steps.c.createdAt.is_(None), steps.c.id > step_id)
    later = or_(steps.c.createdAt > created, and_(steps.c.createdAt == created, steps.c.id > step_id))
    return or_(later, steps.c.createdAt.is_(None))


class SQLMessagePages:
    """The data layer's `_page_steps` on SQL."""

    if TYPE_CHECKING:
        _run: Callable[..., Awaitable[Any]]
        _step_row: Callable[[Any], dict]
        _element_row: Callable[[Any], dict]

    async def _page_steps(self, thread_id: str, position: Position | None, limit: int,
                          kinds: tuple[str, ...]) -> tuple[list[dict], list[dict]]:
        query = select(steps).where(steps.c.threadId == thread_id, steps.c.type.in_(kinds))
        if (condition := after(position)) is not None:
            query = query.where(condition)
        query = query.order_by(UNDATED_LAST, steps.c.createdAt, steps.c.id).limit(limit)

        async def work(conn: AsyncConnection):
            step_rows = (await conn.execute(query)).all()
            ids = [row.id for row in step_rows]
            if not ids:
                return step_rows, [], []
            rated = (await conn.execute(select(feedbacks).where(feedbacks.c.forId.in_(ids)))).all()
            attached = (await conn.execute(
                select(elements).where(elements.c.threadId == thread_id, elements.c.forId.in_(ids)))).all()
            return step_rows, rated, attached

        step_rows, rated, attached = await self._run("page_messages", work, thread_id=thread_id)
        by_step = {f.forId: {"id": f.id, "forId": f.forId, "value": f.value, "comment": f.comment} for f in rated}
        page = []
        for row in step_rows:
            step = self._step_row(row)
            if row.id in by_step:
                step["feedback"] = by_step[row.id]
            page.append(step)
        return page, [self._element_row(row) for row in attached]
