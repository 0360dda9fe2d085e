"""The per-thread chat settings (model, temperature, max tokens, history length, prompt
template, reading links, searching all of the user's documents): what the settings panel
shows, what thread metadata stores under `chat_settings`,
and what the API accepts per conversation or per call."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .config import ChatConfig
from .prompts import PromptBook


@dataclass(frozen=True)
class ThreadSettings:
    """The per-thread chat settings (Chainlit `ChatSettings` values), validated."""

    model: str
    temperature: float
    max_tokens: int  # <= 0: no limit
    history_length: int
    prompt: str
    read_links: bool = True  # fetch the pages a message links (KNOWLEDGE_READ_LINKS=false: never)
    all_documents: bool = False  # retrieve from every thread's documents, not only this one's

    @property
    def max_tokens_or_none(self) -> int | None:
        return self.max_tokens if self.max_tokens > 0 else None

    @classmethod
    def defaults(cls, config: ChatConfig, prompts: PromptBook) -> ThreadSettings:
        return cls(
            model=config.model,
            temperature=config.temperature,
            max_tokens=config.max_tokens,
            history_length=config.history_length,
            prompt=prompts.default,
        )

    @classmethod
    def from_values(cls, values: Mapping[str, Any], config: ChatConfig, prompts: PromptBook) -> ThreadSettings:
        """Settings from the UI / stored thread metadata; bad or stale values use the default."""
        base = cls.defaults(config, prompts)
        model = values.get("model")
        prompt = values.get("prompt")
        return cls(
            model=model if isinstance(model, str) and model in config.model_choices else base.model,
            temperature=min(max(_number(values.get("temperature"), base.temperature), 0.0), 2.0),
            max_tokens=int(_number(values.get("max_tokens"), base.max_tokens)),
            history_length=max(int(_number(values.get("history_length"), base.history_length)), 0),
            prompt=prompt if isinstance(prompt, str) and prompt in prompts.templates else base.prompt,
            read_links=_flag(values.get("read_links"), base.read_links),
            all_documents=_flag(values.get("all_documents"), base.all_documents),
        )

    def as_values(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
            "history_length": self.history_length,
            "prompt": self.prompt,
            "read_links": self.read_links,
            "all_documents": self.all_documents,
        }


def _number(value: Any, default: float) -> float:
    if isinstance(value, bool) or value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _flag(value: Any, default: bool) -> bool:
    return value if isinstance(value, bool) else default
