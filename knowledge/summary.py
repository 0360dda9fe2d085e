"""The running summary of a long conversation: the older turns that no longer fit the
model's context, folded by the model into a short text stored with the thread.

`needs_update` is the policy (one summary call every few turns, not every turn); the chat
service runs `Summarizer.summarize` in the background after an answer, on the context
builder's `Context.uncovered` turns, and stores the result in the thread's metadata under
`summary`. The summary covers a thread's turns from its first one up to `through_id`; each
update folds the next uncovered turns (oldest first, as many as fit `SUMMARY_INPUT_TOKENS`)
into the previous summary, so a thread resumed with hundreds of unsummarised turns catches
up over a few updates instead of cramming them into one request.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from typing import Any

from chat.history import MESSAGE_OVERHEAD_TOKENS, Turn, estimate_tokens, truncate_to_tokens
from chat.prompts import PromptBook
from chat.providers import ChatRequest, LLMError, Provider

from .context import SUMMARY_KEY, Context, Summary, turn_digest

logger = logging.getLogger("chainlit").getChild("Knowledge")

#: A summary call is due once this many left-out turns, or this many of their tokens, have
#: piled up beyond what the summary covers: while a conversation runs past its context (or
#: its history length), each answer pushes about one exchange out, so a call comes every
#: three answers or so.
UPDATE_TURNS = 6
UPDATE_TOKENS = 1500
#: How much of the uncovered turns one summary call reads (each turn cut to
#: `TURN_INPUT_TOKENS`), and less when the model's context is smaller.
SUMMARY_INPUT_TOKENS = 3000
TURN_INPUT_TOKENS = 600
#: The summary's own length: the answer's max tokens (the prompt asks for 200 words), at
#: most a quarter of the model's context.
SUMMARY_MAX_TOKENS = 400
SUMMARY_TEMPERATURE = 0.2
#: A stored summary longer than this is cut before it is folded again.
PREVIOUS_MAX_TOKENS = 2 * SUMMARY_MAX_TOKENS
MIN_INPUT_TOKENS = 64
NO_PREVIOUS = "(none)"

_LABEL = re.compile(r"^\s*(?:updated\s+)?summary\s*:\s*", re.IGNORECASE)


def needs_update(summary: Summary | None, uncovered: Sequence[Turn]) -> bool:
    """Whether enough left-out, unsummarised text has piled up after `summary` (None: none
    yet; the same thresholds apply) for a summary call. Turns without an id (a history an
    API caller sent) cannot anchor a stored summary."""
    if not uncovered or uncovered[-1].id is None:
        return False
    return len(uncovered) >= UPDATE_TURNS or sum(estimate_tokens(turn.content) for turn in uncovered) >= UPDATE_TOKENS


def _line(turn: Turn, text: str) -> str:
    return f"{'User' if turn.role == 'user' else 'Assistant'}: {text}"


class Summarizer:
    """One model call that folds older turns into the running summary."""

    def __init__(self, provider: Provider, prompts: PromptBook, *, context_tokens: int | None = None,
                 max_tokens: int | None = None):
        self.provider = provider
        self.prompts = prompts
        self.context_tokens = context_tokens
        # In a small context the summary is shorter too, leaving room for the turns it reads
        # (and it takes at most half of a request's room: knowledge.context.SUMMARY_SHARE).
        default = SUMMARY_MAX_TOKENS if context_tokens is None else min(SUMMARY_MAX_TOKENS, context_tokens // 4)
        self.max_tokens = max_tokens or default

    def input_budget(self, system: str, previous: str) -> int:
        """Tokens for the turns: `SUMMARY_INPUT_TOKENS`, less in a small context (what the
        prompt, the previous summary and the answer take)."""
        budget = SUMMARY_INPUT_TOKENS
        if self.context_tokens is not None:
            template = self.prompts.summary.user or ""
            fixed = (estimate_tokens(system) + estimate_tokens(previous) + estimate_tokens(template)
                     + 2 * MESSAGE_OVERHEAD_TOKENS + self.max_tokens)
            budget = min(budget, self.context_tokens - fixed)
        return max(budget, MIN_INPUT_TOKENS)

    @staticmethod
    def select(turns: Sequence[Turn], budget: int) -> tuple[list[Turn], str]:
        """The oldest turns that fit `budget` (at least one, cut to fit), ending on a turn
        with an id, and their transcript."""
        chosen: list[Turn] = []
        lines: list[str] = []
        left = budget
        for turn in turns:
            line = _line(turn, truncate_to_tokens(turn.content, TURN_INPUT_TOKENS))
            cost = estimate_tokens(line) + 1  # the newline
            if cost > left:
                if not chosen:
                    chosen.append(turn)
                    lines.append(truncate_to_tokens(line, left))
                break
            chosen.append(turn)
            lines.append(line)
            left -= cost
        while chosen and chosen[-1].id is None:
            chosen.pop()
            lines.pop()
        return chosen, "\n".join(lines)

    async def summarize(self, previous: Summary | None, turns: Sequence[Turn], *, model: str,
                        thread_id: str = "") -> Summary | None:
        """`previous` with the oldest of `turns` folded in (the turns that follow the ones
        it covers), or None when the model call fails or says nothing (logged as a WARNING;
        the conversation goes on, and the next update tries again)."""
        template = self.prompts.summary
        system = template.render_system()
        previous_text = truncate_to_tokens(previous.text, PREVIOUS_MAX_TOKENS) if previous else NO_PREVIOUS
        chosen, transcript = self.select(turns, self.input_budget(system, previous_text))
        if not chosen:
            return None
        request = ChatRequest(
            messages=[
                {"role": "system", "content": system},
                {"role": "user", "content": template.render_user(transcript, previous=previous_text)},
            ],
            model=model,
            temperature=SUMMARY_TEMPERATURE,
            max_tokens=self.max_tokens,
        )
        try:
            completion = await self.provider.complete(request)
        except LLMError as err:
            logger.warning("summary of thread %s failed (%s, provider %s, model %s): %s; it stays as it was",
                           thread_id, err.kind, err.provider or self.provider.name, model, err.detail)
            return None
        text = _LABEL.sub("", completion.text.strip(), count=1).strip()
        if not text:
            logger.warning("summary of thread %s: the model (%s) returned no text; it stays as it was", thread_id, model)
            return None
        last = chosen[-1]
        return Summary(
            text=text,
            through_id=last.id,
            turns=(previous.turns if previous else 0) + len(chosen),
            updated_at=datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            through_digest=turn_digest(last),
        )


class SummaryUpdates:
    """The background side, one per process: at most one summary call per thread at a time,
    its result stored in the thread's metadata under `summary` (the data layer merges
    metadata per key, so the thread's other keys — `chat_settings`, … — stay)."""

    def __init__(self, provider: Provider, context_tokens: int | None = None):
        self.provider = provider
        self.context_tokens = context_tokens
        self._running: set[str] = set()

    def start(self, thread_id: str | None, model: str, context: Context, prompts: PromptBook, data_layer: Any,
              on_summary: Callable[[Summary], None]) -> Coroutine[Any, Any, Summary | None] | None:
        """The update to run in the background after this request, or None when none is due
        (offline provider, no thread, one already running, not enough piled up)."""
        if (not thread_id or self.provider.offline or thread_id in self._running
                or not needs_update(context.summary, context.uncovered)):
            return None
        self._running.add(thread_id)
        return self._run(thread_id, model, context.summary, list(context.uncovered), prompts, data_layer, on_summary)

    async def _run(self, thread_id: str, model: str, previous: Summary | None, turns: list[Turn], prompts: PromptBook,
                   data_layer: Any, on_summary: Callable[[Summary], None]) -> Summary | None:
        try:
            summarizer = Summarizer(self.provider, prompts, context_tokens=self.context_tokens)
            summary = await summarizer.summarize(previous, turns, model=model, thread_id=thread_id)
            if summary is None:
                return None
            on_summary(summary)
            if data_layer is not None:
                # `update_thread` creates a missing thread: one deleted while the model wrote
                # its summary must not come back as an ownerless shell.
                if not await data_layer.get_thread_author(thread_id):
                    logger.info("thread %s is gone (or has no owner); its summary is not stored", thread_id)
                    return summary
                await data_layer.update_thread(thread_id=thread_id, metadata={SUMMARY_KEY: summary.as_json()})
            return summary
        finally:
            self._running.discard(thread_id)
