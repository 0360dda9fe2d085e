"""Helpers shared by the clients' `from_url` parsers."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from .base import DEFAULT_URL_EXPIRY_SECONDS


def query_params(url: str) -> dict[str, str]:
    """The last value of each query parameter of a storage URL."""
    return {k: v[-1] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


def expiry_from(params: dict[str, str]) -> int:
    """`?expiry=SECONDS` of a storage URL, else the default."""
    raw = params.get("expiry")
    if raw is None:
        return DEFAULT_URL_EXPIRY_SECONDS
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"expiry must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError("expiry must be positive")
    return value

