"""Fixtures for the chat tests: the OpenAI-compatible test server and chat configs."""

from __future__ import annotations

import pytest

from chat.config import ChatConfig, load_chat_config
from tests.servers.openai_compat import OpenAICompatServer


@pytest.fixture(scope="session")
def llm_server_session():
    with OpenAICompatServer() as server:
        yield server


@pytest.fixture
def llm_server(llm_server_session):
    """The shared test server, with its script and request log cleared for each test."""
    llm_server_session.reset()
    yield llm_server_session
    llm_server_session.reset()


@pytest.fixture
def make_config(llm_server):
    """`make_config(**env)`: a ChatConfig pointed at the test server (no retries by default)."""

    def factory(**env: str) -> ChatConfig:
        values = {
            "OPENAI_BASE_URL": llm_server.base_url,
            "OPENAI_API_KEY": "sk-test-key",
            "LLM_MODEL": "test-model",
            "LLM_MODELS": "test-model,other-model",
            "LLM_MAX_RETRIES": "0",
            "LLM_TIMEOUT_SECONDS": "5",
        }
        values.update(env)
        return load_chat_config(values)

    return factory
