"""Fixtures shared with the chat tests: the OpenAI-compatible test server, chat configs, and
a Chainlit session over the real SQLite data layer and local storage."""

from tests.chat.conftest import llm_server, llm_server_session, make_config  # noqa: F401
from tests.chat.test_chat_service import open_chat, stack  # noqa: F401
