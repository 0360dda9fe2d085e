"""Helpers shared by the clients' `from_url` parsers and download headers."""

from __future__ import annotations

from urllib.parse import parse_qs, quote, urlsplit

from .base import DEFAULT_URL_EXPIRY_SECONDS


def content_disposition(disposition: str, filename: str) -> str:
    """`inline; filename="ascii"; filename*=UTF-8''utf8` (RFC 6266 / RFC 5987)."""
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


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

