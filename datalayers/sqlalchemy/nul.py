"""NUL characters on PostgreSQL, whose `text` and `jsonb` types cannot hold U+0000.

A message may contain NUL (pasted binary, a model's output); SQLite and MySQL/MariaDB store
it as it is, PostgreSQL refuses the whole row. So on PostgreSQL, and only there, text is
escaped reversibly on its way in and restored on its way out, in one place: the column
types (`NulSafeText`, `NulSafeString`, which schema.py uses) and the engine's JSON
serializer (`dumps`, `loads`), so every statement gets it.

The escape uses U+FDD0, a Unicode noncharacter (never assigned, not used in interchanged
text): NUL becomes U+FDD0 "0", and U+FDD0 itself becomes U+FDD0 U+FDD0. Escaping a search
term the same way keeps substring search exact, except that a term could match across an
escape in a text that contains U+FDD0 — which real text does not.
"""

from __future__ import annotations

import json
import re
from typing import Any

from sqlalchemy import String, Text, TypeDecorator

MARK = "\ufdd0"
_ESCAPED = re.compile(MARK + "(.)", re.DOTALL)
# In JSON text from json.dumps (ASCII-only): an escaped backslash, NUL, or the mark. The
# backslash pair is matched first, so `\\u0000` (a backslash, then "u0000") is left alone.
_JSON_ESCAPES = re.compile(r"\\\\|\\u0000|\\ufdd0")
_JSON_REPLACEMENTS = {"\\\\": "\\\\", "\\u0000": "\\ufdd00", "\\ufdd0": "\\ufdd0\\ufdd0"}


def escape(text: str) -> str:
    """`text` without NUL, reversibly."""
    if "\x00" not in text and MARK not in text:
        return text
    return text.replace(MARK, MARK + MARK).replace("\x00", MARK + "0")


def unescape(text: str) -> str:
    if MARK not in text:
        return text
    return _ESCAPED.sub(lambda m: MARK if m.group(1) == MARK else "\x00", text)


def unescape_tree(value: Any) -> Any:
    """A decoded JSON document with every key and string unescaped."""
    if isinstance(value, str):
        return unescape(value)
    if isinstance(value, dict):
        return {unescape(k): unescape_tree(v) for k, v in value.items()}
    if isinstance(value, list):
        return [unescape_tree(v) for v in value]
    return value


def dumps(value: Any) -> str:
    """The engine's JSON serializer on PostgreSQL: json.dumps, then NUL escaped in keys and
    strings (the text is only scanned when it has one, or the mark)."""
    text = json.dumps(value)
    if "\\u0000" not in text and "\\ufdd0" not in text:
        return text
    return _JSON_ESCAPES.sub(lambda m: _JSON_REPLACEMENTS[m.group(0)], text)


def loads(text: str | bytes) -> Any:
    value = json.loads(text)
    marked = MARK in text if isinstance(text, str) else MARK.encode() in text
    return unescape_tree(value) if marked else value


class _NulSafe(TypeDecorator):
    """Escapes on the way in and restores on the way out, on PostgreSQL; elsewhere the plain
    type, with no processing at all."""

    cache_ok = True

    def bind_processor(self, dialect):
        if dialect.name == "postgresql":
            return super().bind_processor(dialect)
        return self.impl_instance.bind_processor(dialect)

    def result_processor(self, dialect, coltype):
        if dialect.name == "postgresql":
            return super().result_processor(dialect, coltype)
        return self.impl_instance.result_processor(dialect, coltype)

    def process_bind_param(self, value: Any, dialect) -> Any:
        return escape(value) if isinstance(value, str) else value

    def process_result_value(self, value: Any, dialect) -> Any:
        return unescape(value) if isinstance(value, str) else value


class NulSafeText(_NulSafe):
    impl = Text
    cache_ok = True


class NulSafeString(_NulSafe):
    impl = String
    cache_ok = True
