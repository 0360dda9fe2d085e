"""Data layers, chosen by `DATABASE_URL` scheme. Importing this package loads no driver.

Each entry: scheme -> ("module:Class", pip extra, driver modules that must be importable).
"""

DATA_LAYER_SCHEMES: dict[str, tuple] = {
    "sqlite": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", None, ("aiosqlite",)),
    "sqlite+aiosqlite": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", None, ("aiosqlite",)),
    "postgres": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "postgres", ("asyncpg",)),
    "postgresql": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "postgres", ("asyncpg",)),
    "postgresql+asyncpg": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "postgres", ("asyncpg",)),
    "mysql": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "mysql", ("aiomysql",)),
    "mysql+aiomysql": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "mysql", ("aiomysql",)),
    "mariadb": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "mysql", ("aiomysql",)),
    "mariadb+aiomysql": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "mysql", ("aiomysql",)),
    "dynamodb": ("datalayers.dynamodb:DynamoDBDataLayer", "aws", ("aioboto3",)),
}
