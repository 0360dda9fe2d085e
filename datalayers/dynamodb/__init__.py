"""The DynamoDB data layer: Chainlit's data-layer contract on one DynamoDB table (aioboto3).

`layer.py` the data layer; `items.py` the key layout and value codec; `client.py` the AWS
calls; `steps.py` one-request step writes; `sidebar.py` pages from the index; `search.py`
the per-thread search digest; `large.py` large attributes in blob storage; `feedback.py`
ratings and their counters; `provision.py` the table; `__main__.py` the command line
(`python -m datalayers.dynamodb provision|upgrade`).
"""

from .client import DynamoDBError, parse_dynamodb_url
from .items import (
    BLOBS,
    DEFAULT_INLINE_LIMIT,
    FEEDBACK_DOWN,
    FEEDBACK_UP,
    INDEX_ATTRIBUTES,
    INDEX_NAME,
    REV,
    TEXT,
    TEXT_BYTES,
    TEXT_SINCE,
    TEXT_TRUNCATED,
    activity_sort_key,
    deserialize,
    element_key,
    feedback_id_for,
    locator_key,
    parse_feedback_id,
    public,
    serialize,
    step_key,
    thread_key,
    user_key,
)
from .layer import DynamoDBDataLayer
from .provision import (
    TEMPLATE_PATH,
    check_table_description,
    create_table_request,
    load_table_template,
    provision_table,
    upgrade_table,
)
from .search import TEXT_LIMIT


def main(argv: list[str] | None = None) -> int:
    """The command line (`python -m datalayers.dynamodb`), imported only when called."""
    from .__main__ import main as command_line

    return command_line(argv)


__all__ = [
    "BLOBS", "DEFAULT_INLINE_LIMIT", "FEEDBACK_DOWN", "FEEDBACK_UP", "INDEX_ATTRIBUTES", "INDEX_NAME", "REV",
    "TEMPLATE_PATH", "TEXT", "TEXT_BYTES", "TEXT_LIMIT", "TEXT_SINCE", "TEXT_TRUNCATED", "DynamoDBDataLayer",
    "DynamoDBError", "activity_sort_key", "check_table_description", "create_table_request", "deserialize",
    "element_key", "feedback_id_for", "load_table_template", "locator_key", "main", "parse_dynamodb_url",
    "parse_feedback_id", "provision_table", "public", "serialize", "step_key", "thread_key", "upgrade_table",
    "user_key",
]
