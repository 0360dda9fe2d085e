"""The API-token store on SQLite, PostgreSQL, MariaDB and DynamoDB (moto): the contract in
tests/contracts/api_tokens.py, through `open_layer` (conftest.py)."""

from tests.contracts.api_tokens import ApiTokenContract


class TestApiTokens(ApiTokenContract):
    pass
