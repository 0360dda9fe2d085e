"""Prompt templates that operators edit in a TOML file (see `chat/prompts.toml`)."""

from __future__ import annotations

import asyncio
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from string import Template

PLACEHOLDERS = frozenset({"input", "user", "date"})
TITLE_PLACEHOLDERS = PLACEHOLDERS | {"answer"}
SUMMARY_PLACEHOLDERS = PLACEHOLDERS | {"previous"}


class PromptError(ValueError):
    """The prompt file is missing, malformed, or a template uses an unknown placeholder."""


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    label: str
    system: str
    user: str | None = None

    def render_system(self, **values: str) -> str:
        return Template(self.system).substitute(_values(values))

    def render_user(self, text: str, **values: str) -> str:
        if not self.user:
            return text
        return Template(self.user).substitute(_values(values, input=text))


DEFAULT_TITLE = PromptTemplate(
    name="title",
    label="title",
    system="Reply with a title of at most six words for this conversation, and nothing else.",
    user="User: ${input}\nAssistant: ${answer}",
)
DEFAULT_SUMMARY = PromptTemplate(
    name="summary",
    label="summary",
    system=(
        "You keep the running summary of a conversation between a user and an assistant. Merge the "
        "earlier summary and the new messages into one summary of at most 200 words: what the user "
        "said about themselves and their goals, facts, names and numbers, decisions, open questions. "
        "Write in the conversation's language. Reply with the summary only."
    ),
    user="Earlier summary:\n${previous}\n\nNew messages:\n${input}\n\nUpdated summary:",
)


@dataclass(frozen=True)
class PromptBook:
    templates: Mapping[str, PromptTemplate]
    default: str
    title: PromptTemplate
    source: Path
    summary: PromptTemplate = DEFAULT_SUMMARY

    def get(self, name: str | None) -> PromptTemplate:
        """The named template; an unknown or empty name falls back to the default one."""
        if name and name in self.templates:
            return self.templates[name]
        return self.templates[self.default]

    @property
    def names(self) -> list[str]:
        return list(self.templates)


def _values(values: Mapping[str, str], **extra: str) -> dict[str, str]:
    merged = {"input": "", "user": "", "date": datetime.now(UTC).strftime("%Y-%m-%d")}
    merged.update(values)
    merged.update(extra)
    return merged


def _check(text: str, allowed: frozenset[str], where: str) -> None:
    template = Template(text)
    if not template.is_valid():
        raise PromptError(f"{where}: invalid placeholder syntax (use ${{name}}, and $$ for '$')")
    unknown = set(template.get_identifiers()) - allowed
    if unknown:
        raise PromptError(
            f"{where}: unknown placeholder(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(allowed))}"
        )


def _template(name: str, table: object, allowed: frozenset[str], where: str) -> PromptTemplate:
    if not isinstance(table, dict):
        raise PromptError(f"{where} must be a table")
    system = table.get("system")
    user = table.get("user")
    if not isinstance(system, str) or not system.strip():
        raise PromptError(f"{where}.system must be a non-empty string")
    _check(system, allowed, f"{where}.system")
    if user is not None:
        if not isinstance(user, str) or "input" not in Template(user).get_identifiers():
            raise PromptError(f"{where}.user must be a string containing ${{input}}")
        _check(user, allowed, f"{where}.user")
    label = table.get("label") or name
    if not isinstance(label, str):
        raise PromptError(f"{where}.label must be a string")
    return PromptTemplate(name=name, label=label, system=system.strip(), user=user)


def parse_prompts(text: str, source: Path, default_override: str = "") -> PromptBook:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise PromptError(f"{source}: {exc}") from exc
    tables = data.get("templates")
    if not isinstance(tables, dict) or not tables:
        raise PromptError(f"{source}: needs at least one [templates.NAME] table")
    templates = {
        name: _template(name, table, PLACEHOLDERS, f"{source}: templates.{name}")
        for name, table in tables.items()
    }
    default = default_override or data.get("default") or next(iter(templates))
    if default not in templates:
        raise PromptError(f"{source}: default template {default!r} is not defined; defined: {', '.join(templates)}")
    if "title" in data:
        title = _template("title", data["title"], TITLE_PLACEHOLDERS, f"{source}: title")
    else:
        title = DEFAULT_TITLE
    if "summary" in data:
        summary = _template("summary", data["summary"], SUMMARY_PLACEHOLDERS, f"{source}: summary")
    else:
        summary = DEFAULT_SUMMARY
    return PromptBook(templates=templates, default=default, title=title, source=source, summary=summary)


def load_prompts(path: Path, default_override: str = "") -> PromptBook:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path} (set CHAT_PROMPTS_FILE)") from None
    return parse_prompts(text, path, default_override)


_LOADED: dict[tuple[Path, str], tuple[tuple[int, int], PromptBook]] = {}


async def load_prompts_async(path: Path, default_override: str = "") -> PromptBook:
    """`load_prompts` off the event loop; the file is parsed again only when it changed
    (its modification time or size), so edits still apply without a restart while every
    chat start and API call does not re-read it."""
    try:
        stat = await asyncio.to_thread(path.stat)
    except FileNotFoundError:
        raise PromptError(f"prompt file not found: {path} (set CHAT_PROMPTS_FILE)") from None
    version = (stat.st_mtime_ns, stat.st_size)
    cached = _LOADED.get((path, default_override))
    if cached is not None and cached[0] == version:
        return cached[1]
    book = await asyncio.to_thread(load_prompts, path, default_override)
    _LOADED[(path, default_override)] = (version, book)
    return book
