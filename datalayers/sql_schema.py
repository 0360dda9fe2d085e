# Temporary shim while the migrations move to their own table definitions.
from datalayers.sqlalchemy.schema import *  # noqa: F401,F403
from datalayers.sqlalchemy.schema import CHAINLIT_POSTGRES_DDL, POSTGRES_SEARCH_INDEXES, TABLES  # noqa: F401
