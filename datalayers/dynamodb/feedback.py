"""Ratings: the `feedback` map on the rated step (Chainlit's place for it) and the thread's
`_feedbackUp` / `_feedbackDown` counters, which the index projects so the sidebar's
feedback filter is part of the index query. A rating and its counters change in one
transaction, conditional on the step's `_rev`, so concurrent ratings keep them exact."""

from __future__ import annotations

import logging
from typing import Any

from .client import Conflict, DynamoDBError, Table, retry_conflicts
from .items import FEEDBACK_DOWN, FEEDBACK_UP, REV, Expression, serialize, step_key, thread_key


def feedback_value(step: dict[str, Any]) -> int | None:
    feedback = step.get("feedback")
    if isinstance(feedback, dict) and feedback.get("value") is not None:
        return int(feedback["value"])
    return None


def rev_condition(e: Expression, item: dict[str, Any]) -> str:
    """The item is as read: same `_rev`, or (written by Chainlit's layer) still without one."""
    if REV in item:
        return f"{e.name(REV)} = {e.value(item[REV])}"
    return f"attribute_exists({e.name('PK')}) AND attribute_not_exists({e.name(REV)})"


async def counter_update(table: Table, thread_id: str, step_id: str, old: int | None,
                         new: int | None, journaled: bool = False) -> dict[str, Any]:
    """Transaction item keeping the thread's counters right when one step's rating goes from
    `old` to `new` (None = unrated). A thread without counters (new, or written by
    Chainlit's layer) gets them counted from its steps first."""
    thread = await table.get(thread_key(thread_id), "feedback counters", {"thread_id": thread_id},
                             attributes=(FEEDBACK_UP, FEEDBACK_DOWN, "PK"), journaled=journaled)
    if thread is None:
        raise ValueError(f"feedback: thread {thread_id!r} does not exist")
    e = Expression()
    rev = e.bump_rev()
    if FEEDBACK_UP in thread and FEEDBACK_DOWN in thread:
        up = (new == 1) - (old == 1)
        down = (new == 0) - (old == 0)
        update = f"ADD {rev}, {e.name(FEEDBACK_UP)} {e.value(up)}, {e.name(FEEDBACK_DOWN)} {e.value(down)}"
        condition = f"attribute_exists({e.name(FEEDBACK_UP)})"
    else:
        counts = {0: 0, 1: 0}
        for step in await table.partition(thread_id, "feedback counters", "STEP#", attributes=("SK", "feedback"),
                                          journaled=journaled):
            value = feedback_value(step)
            if value in counts and step["SK"] != f"STEP#{step_id}":
                counts[value] += 1
        if new in counts:
            counts[new] += 1
        update = (f"SET {e.name(FEEDBACK_UP)} = {e.value(counts[1])}, "
                  f"{e.name(FEEDBACK_DOWN)} = {e.value(counts[0])} ADD {rev}")
        condition = f"attribute_exists({e.name('PK')}) AND attribute_not_exists({e.name(FEEDBACK_UP)})"
    return {"Update": {"TableName": table.name, "Key": serialize(thread_key(thread_id)),
                       "UpdateExpression": update, "ConditionExpression": condition, **e.kwargs()}}


async def set_step_feedback(table: Table, thread_id: str, step_id: str, feedback: dict[str, Any] | None,
                            operation: str, logger: logging.Logger) -> bool:
    """Set (or with None remove) a step's feedback and the thread's counters in one
    transaction. False when the step (or its feedback, for removal) does not exist."""
    ids = {"step_id": step_id, "thread_id": thread_id}

    async def attempt() -> bool:
        step = await table.get(step_key(thread_id, step_id), operation, ids, attributes=("PK", REV, "feedback"))
        if step is None:
            return False
        old = feedback_value(step)
        if feedback is None and step.get("feedback") is None:
            return False
        new = None if feedback is None else int(feedback["value"])
        e = Expression()
        rev = f"{e.name(REV)} = {e.value(int(step.get(REV) or 0) + 1)}"
        update = (f"SET {e.name('feedback')} = {e.value(feedback)}, {rev}" if feedback is not None
                  else f"SET {rev} REMOVE {e.name('feedback')}")
        condition = rev_condition(e, step)
        items = [{"Update": {"TableName": table.name, "Key": serialize(step_key(thread_id, step_id)),
                             "UpdateExpression": update, "ConditionExpression": condition, **e.kwargs()}}]
        if old != new:
            items.append(await counter_update(table, thread_id, step_id, old, new))
        try:
            await table.transact(items, operation, ids)
        except DynamoDBError as exc:
            if exc.is_conflict:
                raise Conflict() from exc
            raise
        return True

    return await retry_conflicts(operation, ids, attempt, logger)


async def step_delete_items(table: Table, thread_id: str, step_id: str, step: dict[str, Any],
                            journaled: bool = False) -> list:
    """Transaction items deleting a step as read (conditional on its `_rev`), with its
    rating taken off the thread's counters."""
    e = Expression()
    items = [{"Delete": {"TableName": table.name, "Key": serialize(step_key(thread_id, step_id)),
                         "ConditionExpression": rev_condition(e, step), **e.kwargs()}}]
    old_value = feedback_value(step)
    if old_value is not None:
        items.append(await counter_update(table, thread_id, step_id, old_value, None, journaled))
    return items
