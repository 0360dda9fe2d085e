"""Prompt templates from the operator's TOML file."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from chat.config import DEFAULT_PROMPTS_FILE, load_chat_config
from chat.prompts import PromptError, load_prompts, parse_prompts

SRC = Path("prompts.toml")


def test_shipped_prompt_file_loads_and_renders():
    book = load_prompts(DEFAULT_PROMPTS_FILE)
    assert book.default == "assistant"
    assert {"assistant", "concise", "code-reviewer", "translator"} <= set(book.names)
    system = book.get("assistant").render_system(user="Ada")
    assert "Ada" in system and "${" not in system
    assert book.get("translator").render_user("Bonjour") .endswith("Bonjour")
    assert book.get("no-such-template").name == "assistant"  # unknown names fall back
    title = book.title.render_user("q?", answer="a!")
    assert "q?" in title and "a!" in title


def test_default_can_be_overridden_and_must_exist():
    book = load_prompts(DEFAULT_PROMPTS_FILE, default_override="concise")
    assert book.default == "concise"
    with pytest.raises(PromptError, match="not defined"):
        load_prompts(DEFAULT_PROMPTS_FILE, default_override="missing")


def test_custom_file_via_environment(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('[templates.pirate]\nsystem = "Talk like a pirate to ${user}. Costs $$5."\n')
    config = load_chat_config({"CHAT_PROMPTS_FILE": str(path)})
    book = load_prompts(config.prompts_file)
    assert book.default == "pirate"
    assert book.get(None).render_system(user="Bob") == "Talk like a pirate to Bob. Costs $5."
    assert "Reply with a title" in book.title.system  # built-in title prompt when none is given


@pytest.mark.parametrize(
    "text,message",
    [
        ("default = 'x'", "at least one"),
        ("[templates.a]\nsystem = 'Hi ${nobody}'", "unknown placeholder"),
        ("[templates.a]\nsystem = 'ok'\nuser = 'no input here'", "${input}"),
        ("[templates.a]\nsystem = ''", "non-empty"),
        ("[templates.a]\nsystem = 'cost $5'", "invalid placeholder"),
        ("[templates.a\nsystem = 'x'", "prompts.toml"),
    ],
)
def test_invalid_files_are_rejected_with_a_reason(text, message):
    with pytest.raises(PromptError, match=message.replace("$", r"\$").replace("{", r"\{").replace("}", r"\}")):
        parse_prompts(text, SRC)


def test_missing_file_names_the_setting(tmp_path):
    with pytest.raises(PromptError, match="CHAT_PROMPTS_FILE"):
        load_prompts(tmp_path / "absent.toml")


@pytest.mark.parametrize(
    "name,value,message",
    [
        ("LLM_TEMPERATURE", "3", "between 0.0 and 2.0"),
        ("LLM_TEMPERATURE", "warm", "a number"),
        ("LLM_HISTORY_LENGTH", "-1", "at least 0"),
        ("LLM_CONTEXT_TOKENS", "100", "at least 256"),
        ("LLM_MAX_RETRIES", "x", "an integer"),
        ("LLM_GENERATE_TITLES", "maybe", "true or false"),
        ("LLM_PROVIDER", "bard", "one of openai, langchain, offline"),
    ],
)
def test_invalid_llm_settings_name_the_variable(name, value, message):
    from chat.config import ChatConfigError

    with pytest.raises(ChatConfigError, match=f"{name}.*{re.escape(message)}"):
        load_chat_config({name: value})
