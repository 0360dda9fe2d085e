"""Errors every data layer raises. Each inherits the builtin a caller already catches."""

from __future__ import annotations


class DataLayerError(RuntimeError):
    """A database operation failed; the message says which one and on what ids."""
