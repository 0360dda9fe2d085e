"""What the model sees: earlier turns rebuilt from a stored thread, cut to fit.

Only the last N messages (the thread's history-length setting) are candidates, and of
those only the newest that fit the model's context window after the system prompt, the
new message and the room kept for the answer. Token counts are estimated locally (no
tokenizer download): about four ASCII characters per token, one token per other
character, which overestimates English a little and is close for CJK text.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per message, as OpenAI counts them
DEFAULT_ANSWER_RESERVE = 1024
TRUNCATION_NOTE = "\n[... truncated to fit the model's context ...]"


def estimate_tokens(text: str) -> int:
    if not text:
        return 0
    # Counted in C (encoding drops every other character): a Python loop over the
    # characters took tens of milliseconds of event-loop time per request on long threads.
    ascii_chars = len(text.encode("ascii", "ignore"))
    return (ascii_chars + 3) // 4 + (len(text) - ascii_chars)


def truncate_to_tokens(text: str, tokens: int) -> str:
    """The longest prefix of `text` whose estimate fits in `tokens` (with a note if cut)."""
    if estimate_tokens(text) <= tokens:
        return text
    room = tokens - estimate_tokens(TRUNCATION_NOTE)
    if room <= 0:
        return ""
    # The estimate grows with the prefix: a binary search costs a few C-speed estimates
    # where a character loop cost milliseconds on a long page.
    low, high = 0, len(text)
    while low < high:
        mid = (low + high + 1) // 2
        if estimate_tokens(text[:mid]) <= room:
            low = mid
        else:
            high = mid - 1
    return text[:low] + TRUNCATION_NOTE


@dataclass(frozen=True)
class Turn:
    role: Literal["user", "assistant"]
    content: str
    id: str | None = None

    def as_message(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def turns_from_steps(
    steps: Iterable[Mapping], attachments: Mapping[str, Sequence[str]] | None = None
) -> list[Turn]:
    """User and assistant messages of a stored thread, in order.

    Error steps, answers the user stopped half-way and empty messages are left out (the
    model never produced them whole); `attachments` maps a step id to text blocks
    (attached files) appended to that turn.
    """
    attachments = attachments or {}
    turns: list[Turn] = []
    for step in steps:
        kind = step.get("type")
        if kind not in ("user_message", "assistant_message") or step.get("isError"):
            continue
        if ((step.get("generation") or {}).get("metadata") or {}).get("status") == "cancelled":
            continue
        content = step.get("output") or ""
        extra = attachments.get(step.get("id") or "", ())
        if extra:
            content = "\n\n".join([content, *extra]) if content else "\n\n".join(extra)
        if not content.strip():
            continue
        turns.append(Turn(role="user" if kind == "user_message" else "assistant", content=content, id=step.get("id")))
    return turns


def answer_reserve(context_tokens: int, max_tokens: int | None) -> int:
    """Tokens kept free for the answer: the max-tokens setting, else a default share."""
    if max_tokens and max_tokens > 0:
        return min(max_tokens, context_tokens // 2)
    return min(DEFAULT_ANSWER_RESERVE, context_tokens // 4)


def build_messages(
    system: str,
    history: Sequence[Turn],
    user_content: str,
    *,
    max_messages: int,
    context_tokens: int,
    max_tokens: int | None,
) -> list[dict[str, str]]:
    """System prompt + the newest history that fits + the new user message (the context
    builder without summary or sources; imported here, as it builds on this module)."""
    from knowledge.context import ContextBuilder

    context = ContextBuilder(context_tokens).build(
        system, user_content, history, history_length=max_messages, max_tokens=max_tokens
    )
    return context.messages
