"""Timestamps as every data layer stores them: fixed-width UTC ISO-8601 text
(`2026-01-02T03:04:05.123456Z`), which Chainlit's frontend parses and which sorts as time
on every database, as text."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def format_timestamp(moment: datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def utc_now() -> str:
    return format_timestamp(datetime.now(UTC))


def normalize_timestamp(value: Any) -> str | None:
    """Any ISO-8601 timestamp (or datetime, or epoch seconds) as fixed-width UTC text.

    Naive values are taken as UTC (Chainlit writes UTC with a trailing `Z`).
    """
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return format_timestamp(value)
    if isinstance(value, (int, float)):
        return format_timestamp(datetime.fromtimestamp(value, UTC))
    text = str(value).strip()
    try:
        parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ValueError(f"not an ISO-8601 timestamp: {text[:64]!r}") from None
    return format_timestamp(parsed)
