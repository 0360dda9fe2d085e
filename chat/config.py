"""The chat settings an operator sets in the environment (or `.env`).

Everything here is plain Python: reading the configuration imports no LLM SDK, so the app
starts (with the offline provider) even when the `llm` extra is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

PROVIDERS = ("openai", "langchain", "offline")
DEFAULT_PROMPTS_FILE = Path(__file__).with_name("prompts.toml")


class ChatConfigError(ValueError):
    """An LLM setting in the environment is invalid."""


def _number(env: Mapping[str, str], name: str, default, cast, what: str, low=None, high=None,
            error: type[ValueError] = ChatConfigError):
    """`env[name]` as a number within [low, high] (either bound optional), else `default`;
    a bad value raises `error` naming the variable."""
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = cast(raw)
    except ValueError:
        raise error(f"{name} must be {what}, got {raw!r}") from None
    if (low is not None and value < low) or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise error(f"{name} must be {bounds}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, low: int | None = None,
         error: type[ValueError] = ChatConfigError) -> int:
    return _number(env, name, default, int, "an integer", low, error=error)


def _float(env: Mapping[str, str], name: str, default: float, low=None, high=None,
           error: type[ValueError] = ChatConfigError) -> float:
    return _number(env, name, default, float, "a number", low, high, error=error)


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = (env.get(name) or "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ChatConfigError(f"{name} must be true or false, got {raw!r}")


@dataclass(frozen=True)
class ChatConfig:
    """Operator-level defaults; users override model/temperature/... per thread."""

    provider: str = "offline"
    model: str = "gpt-4o-mini"
    models: tuple[str, ...] = ()
    api_key: str | None = field(default=None, repr=False)
    base_url: str | None = None
    temperature: float = 0.7
    max_tokens: int = 0  # <= 0: no limit
    history_length: int = 20
    context_tokens: int = 8192
    timeout_seconds: float = 60.0
    max_retries: int = 2
    generate_titles: bool = True
    prompts_file: Path = DEFAULT_PROMPTS_FILE
    default_prompt: str = ""
    max_file_chars: int = 20000

    @property
    def offline(self) -> bool:
        return self.provider == "offline"

    @property
    def model_choices(self) -> list[str]:
        """The models offered in the settings panel, the default one first."""
        choices = [self.model]
        choices.extend(m for m in self.models if m not in choices)
        return choices


def load_chat_config(env: Mapping[str, str] | None = None) -> ChatConfig:
    """Read `LLM_*`, `OPENAI_*` and `CHAT_*` variables.

    `LLM_PROVIDER` empty means automatic: `openai` when `OPENAI_API_KEY` or
    `OPENAI_BASE_URL` is set, otherwise the offline provider.
    """
    env = os.environ if env is None else env
    api_key = (env.get("OPENAI_API_KEY") or "").strip() or None
    base_url = (env.get("OPENAI_BASE_URL") or "").strip() or None
    provider = (env.get("LLM_PROVIDER") or "").strip().lower()
    if not provider:
        provider = "openai" if (api_key or base_url) else "offline"
    if provider not in PROVIDERS:
        raise ChatConfigError(f"LLM_PROVIDER must be one of {', '.join(PROVIDERS)}; got {provider!r}")

    model = (env.get("LLM_MODEL") or "").strip() or ("offline-echo" if provider == "offline" else "gpt-4o-mini")
    models = tuple(m.strip() for m in (env.get("LLM_MODELS") or "").split(",") if m.strip())

    prompts_file = Path((env.get("CHAT_PROMPTS_FILE") or "").strip() or DEFAULT_PROMPTS_FILE).expanduser()

    return ChatConfig(
        provider=provider,
        model=model,
        models=models,
        api_key=api_key,
        base_url=base_url,
        temperature=_float(env, "LLM_TEMPERATURE", 0.7, 0.0, 2.0),
        max_tokens=_int(env, "LLM_MAX_TOKENS", 0),
        history_length=_int(env, "LLM_HISTORY_LENGTH", 20, low=0),
        context_tokens=_int(env, "LLM_CONTEXT_TOKENS", 8192, low=256),
        timeout_seconds=_float(env, "LLM_TIMEOUT_SECONDS", 60.0, low=0.001),
        max_retries=_int(env, "LLM_MAX_RETRIES", 2, low=0),
        generate_titles=_bool(env, "LLM_GENERATE_TITLES", True),
        prompts_file=prompts_file,
        default_prompt=(env.get("CHAT_DEFAULT_PROMPT") or "").strip(),
        max_file_chars=_int(env, "CHAT_MAX_FILE_CHARS", 20000, low=0),
    )
