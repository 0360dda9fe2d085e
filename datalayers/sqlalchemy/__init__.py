"""The SQL data layer (SQLite, PostgreSQL, MySQL/MariaDB): `layer.py` the data layer,
`schema.py` the tables, `upserts.py` the single-statement writes, `url.py` URLs and engines,
`failures.py` which errors are worth retrying."""

from ..errors import DataLayerError
from .layer import SQLAlchemyDataLayer
from .url import normalize_database_url

__all__ = ["DataLayerError", "SQLAlchemyDataLayer", "normalize_database_url"]
