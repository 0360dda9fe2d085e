"""What the model sees for one message: everything that competes for its context window,
chosen in one documented priority and reported in the generation record.

The input budget is the model's context (`LLM_CONTEXT_TOKENS`) minus the room kept for the
answer (the max-tokens setting, else a default share: `chat.history.answer_reserve`).
Token counts are the local estimate of `chat.history.estimate_tokens`. Filled in this order:

1. The system prompt (the thread's template), always.
2. The new user message, always; cut (with a note) only when it alone exceeds the budget.
3. The running summary of older turns, when one is stored and still matches the thread
   (its last covered turn is present with the same content), capped at `SUMMARY_SHARE` of
   what remains; dropped again when every turn it covers is sent verbatim anyway.
4. Retrieved passages, best first, whole or not at all, together at most `PASSAGES_SHARE`
   of what remains (a passage that does not fit is skipped and a smaller later one may
   still go in).
5. Fetched web pages, together at most `PAGES_SHARE` of what remains after the passages,
   shared fairly between pages (a short page leaves its unused share to the longer ones);
   a page that does not fit its share is cut with a note, or left out when less than
   `MIN_PIECE_TOKENS` of it would remain.
6. The most recent turns, newest first, at most `history_length` of them, contiguous (the
   first one that does not fit ends the history: an older one never jumps the gap).

So that sources never starve the conversation, the newest exchange (the last two turns
within `history_length`, else the last one) is set aside before the shares of 4 and 5 are
taken, when it needs at most `LAST_EXCHANGE_SHARE` of what remains after 1-3: passages and
pages are then capped by what remains without it.

Messages, in OpenAI chat format: the template as the first system message, the summary as a
system message right after it ("Summary of the earlier conversation: …"), the kept turns,
then one system message with the sources and pages ("Sources (cite them by their label,
e.g. [1]): …", "Web pages the user linked: …") right before the new user message — they
belong to this question, and keeping them last leaves the start of the request stable for
providers' prompt caches.

The record (JSON, the generation's `metadata.context`) says what went in and what was left
out and why, see `ContextBuilder.build`. `Context.uncovered` is the summarizer's input: the
older turns left out of this request and not covered by the summary.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from chat.history import (
    MESSAGE_OVERHEAD_TOKENS,
    Turn,
    answer_reserve,
    estimate_tokens,
    truncate_to_tokens,
)

#: The summary takes at most this share of what remains after the system prompt and the
#: user message (a stored summary of any size cannot crowd out the rest).
SUMMARY_SHARE = 0.5
#: Retrieved passages take at most this share of what remains after the summary (and the
#: newest exchange, set aside).
PASSAGES_SHARE = 0.4
#: Fetched pages take at most this share of what remains after the passages, so the turns
#: keep at least (1 - 0.4) * (1 - 0.5) = 30 % of the room left after the summary.
PAGES_SHARE = 0.5
#: A summary or page cut to fewer tokens than this is left out instead (a stub only costs).
MIN_PIECE_TOKENS = 32
#: How many of the newest turns are set aside before passages and pages take their shares
#: (fewer when they do not fit), and the most of the room they may claim that way: a huge
#: last answer does not push this question's sources out.
LAST_EXCHANGE_TURNS = 2
LAST_EXCHANGE_SHARE = 0.5

SUMMARY_PREFIX = "Summary of the earlier conversation: "
SUMMARY_KEY = "summary"  # where a thread's metadata keeps its summary
SOURCES_HEADER = "Sources (cite them by their label, e.g. [1]):"
PAGES_HEADER = "Web pages the user linked:"
SEPARATOR_TOKENS = 1  # the "\n\n" between blocks, counted once per block (an overestimate)


@dataclass(frozen=True)
class Passage:
    """A retrieved chunk of a document, as the model should cite it."""

    label: str  # "[1]"
    source: str  # the document's name
    location: str  # "page 12", "section 3"; may be empty
    text: str
    chunk_id: str

    def render(self) -> str:
        where = f"{self.source}, {self.location}" if self.location else self.source
        return f"{self.label} {where}: {self.text}"


@dataclass(frozen=True)
class PageText:
    """The readable text of a web page fetched for this message."""

    title: str
    url: str
    text: str

    def heading(self) -> str:
        return f"### {self.title} ({self.url})" if self.title else f"### {self.url}"


def turn_digest(turn: Turn) -> str:
    """A short fingerprint of a turn: a summary covering it is stale once it changes (an
    edited message keeps its id)."""
    return hashlib.sha256(f"{turn.role}\0{turn.content}".encode("utf-8", "surrogatepass")).hexdigest()[:16]


@dataclass(frozen=True)
class Summary:
    """The running summary of a thread's turns up to and including message `through_id`,
    stored in the thread's metadata under `summary`."""

    text: str
    through_id: str | None
    turns: int  # how many turns it covers
    updated_at: str  # ISO 8601, UTC
    through_digest: str = ""  # `turn_digest` of the last covered turn ("" : not checked)

    def as_json(self) -> dict[str, Any]:
        return {"text": self.text, "through_id": self.through_id, "turns": self.turns,
                "updated_at": self.updated_at, "through_digest": self.through_digest}

    @classmethod
    def from_json(cls, data: object) -> Summary | None:
        """The stored summary, or None when there is none or it is not one we wrote (any
        malformed value is ignored: a new summary will replace it)."""
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError:
                return None
        if not isinstance(data, dict):
            return None
        text, through, turns = data.get("text"), data.get("through_id"), data.get("turns")
        updated, digest = data.get("updated_at", ""), data.get("through_digest", "")
        if not isinstance(text, str) or not text.strip():
            return None
        if through is not None and not isinstance(through, str):
            return None
        if isinstance(turns, bool) or not isinstance(turns, int) or turns < 0:
            return None
        if not isinstance(updated, str) or not isinstance(digest, str):
            return None
        return cls(text=text, through_id=through, turns=turns, updated_at=updated, through_digest=digest)

    @classmethod
    def from_metadata(cls, metadata: object) -> Summary | None:
        """The summary kept in a thread's metadata (a dict, or its JSON text)."""
        if isinstance(metadata, (str, bytes)):
            try:
                metadata = json.loads(metadata)
            except ValueError:
                return None
        return cls.from_json(metadata.get(SUMMARY_KEY)) if isinstance(metadata, dict) else None

    def covered_index(self, turns: Sequence[Turn]) -> int | None:
        """The index in `turns` of the last turn this summary covers, or None when it no
        longer matches them (that turn is gone or was edited)."""
        if self.through_id is None:
            return None
        for i in range(len(turns) - 1, -1, -1):
            if turns[i].id == self.through_id:
                if self.through_digest and turn_digest(turns[i]) != self.through_digest:
                    return None
                return i
        return None


@dataclass
class Context:
    """One request's messages, the record of what went in, and the summarizer's input."""

    messages: list[dict[str, str]]
    record: dict[str, Any]
    uncovered: list[Turn] = field(default_factory=list)
    #: The stored summary `uncovered` continues (None: none, or it no longer matches).
    summary: Summary | None = None


def fair_shares(costs: Sequence[int], room: int) -> list[int]:
    """Split `room` between items wanting `costs`: each gets at most its cost, and what a
    small item does not need goes to the bigger ones (water filling)."""
    shares = [0] * len(costs)
    left = max(room, 0)
    order = sorted(range(len(costs)), key=lambda i: costs[i])
    for n, i in enumerate(order):
        shares[i] = min(costs[i], left // (len(order) - n))
        left -= shares[i]
    return shares


def _cost(text: str) -> int:
    return estimate_tokens(text) + MESSAGE_OVERHEAD_TOKENS


class ContextBuilder:
    """Assembles a request's messages within `context_tokens` (see the module docstring)."""

    def __init__(self, context_tokens: int):
        self.context_tokens = context_tokens

    def build(
        self,
        system: str,
        user_content: str,
        turns: Sequence[Turn],
        *,
        history_length: int,
        max_tokens: int | None,
        summary: Summary | None = None,
        passages: Sequence[Passage] = (),
        pages: Sequence[PageText] = (),
    ) -> Context:
        """The request for `user_content` after `turns` (oldest first).

        The record: `budget` (input tokens: context minus `answer_reserve`), `used` (the
        estimate of all messages sent), `user_truncated`; `summary`: `included`, `covers`
        (turns), `truncated`, and `reason` when not included (`none`, `stale`: it no longer
        matches the turns, `history_off`: history length 0, `no_room`, `not_needed`: every
        turn it covers is sent); `passages` and `pages`: `included` (labels / urls, pages
        cut to fit among them), pages' `truncated`, and `left_out`; `turns`: `included`,
        `left_out` (= `beyond_history_length` + `over_budget`), `covered_by_summary` (left
        out but in the sent summary) and `uncovered` (left out and in no summary).
        """
        turns = list(turns)
        reserve = answer_reserve(self.context_tokens, max_tokens)
        budget = self.context_tokens - reserve
        room = budget - (_cost(system) if system else 0)
        user_text = truncate_to_tokens(user_content, max(room - MESSAGE_OVERHEAD_TOKENS, 0))
        room -= _cost(user_text)

        # 3. The summary, if it still matches the turns.
        covered_end = -1
        valid: Summary | None = None
        summary_text: str | None = None
        summary_record: dict[str, Any] = {"included": False, "covers": 0, "truncated": False}
        if summary is None:
            summary_record["reason"] = "none"
        elif history_length <= 0:
            summary_record["reason"] = "history_off"
        elif (index := summary.covered_index(turns)) is None:
            summary_record["reason"] = "stale"
        else:
            valid, covered_end = summary, index
            summary_text, truncated = self._fit_summary(summary.text, int(max(room, 0) * SUMMARY_SHARE))
            if summary_text is None:
                summary_record["reason"] = "no_room"
            else:
                room -= _cost(SUMMARY_PREFIX + summary_text)
                summary_record.update(included=True, covers=covered_end + 1, truncated=truncated)

        # 6 (part): the newest exchange is set aside before sources take their shares.
        candidates_start = max(len(turns) - history_length, 0) if history_length > 0 else len(turns)
        candidates = turns[candidates_start:]
        set_aside = 0
        for n in range(min(LAST_EXCHANGE_TURNS, len(candidates)), 0, -1):
            cost = sum(_cost(turn.content) for turn in candidates[-n:])
            if cost <= room * LAST_EXCHANGE_SHARE:
                set_aside = cost
                break

        # 4. Passages, best first, whole.
        sources_room = int(max(room - set_aside, 0) * PASSAGES_SHARE)
        chosen_passages, passages_left_out, passages_cost = self._fit_passages(passages, sources_room)
        # 5. Pages, fairly shared, cut when needed.
        pages_room = int(max(room - set_aside - passages_cost, 0) * PAGES_SHARE)
        if chosen_passages:  # the pages join the sources' message: no second overhead
            pages_room += MESSAGE_OVERHEAD_TOKENS
        page_blocks, pages_record, pages_cost = self._fit_pages(pages, pages_room)
        room -= passages_cost + pages_cost
        if chosen_passages and page_blocks:
            room += MESSAGE_OVERHEAD_TOKENS

        # 6. The most recent turns, newest first, contiguous.
        window_start = len(turns)
        for i in range(len(turns) - 1, candidates_start - 1, -1):
            cost = _cost(turns[i].content)
            if cost > room:
                break
            room -= cost
            window_start = i

        if summary_text is not None and window_start == 0:
            summary_text = None
            summary_record.update(included=False, covers=0, truncated=False, reason="not_needed")

        uncovered = turns[covered_end + 1:window_start] if history_length > 0 else []
        sources = self._sources_message(chosen_passages, page_blocks)
        messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
        if summary_text is not None:
            messages.append({"role": "system", "content": SUMMARY_PREFIX + summary_text})
        messages.extend(t.as_message() for t in turns[window_start:])
        if sources:
            messages.append({"role": "system", "content": sources})
        messages.append({"role": "user", "content": user_text})

        record = {
            "budget": budget,
            "used": sum(_cost(m["content"]) for m in messages),
            "context_tokens": self.context_tokens,
            "answer_reserve": reserve,
            "user_truncated": user_text != user_content,
            "summary": summary_record,
            "passages": {"included": [p.label for p in chosen_passages], "left_out": passages_left_out},
            "pages": pages_record,
            "turns": {
                "included": len(turns) - window_start,
                "left_out": window_start,
                "beyond_history_length": candidates_start,
                "over_budget": window_start - candidates_start,
                "covered_by_summary": min(covered_end + 1, window_start) if summary_text is not None else 0,
                "uncovered": len(uncovered),
            },
        }
        return Context(messages=messages, record=record, uncovered=uncovered, summary=valid)

    # ---- the pieces ----------------------------------------------------------------------
    @staticmethod
    def _fit_summary(text: str, room: int) -> tuple[str | None, bool]:
        """The summary's text within `room` tokens of its message, cut if needed."""
        if _cost(SUMMARY_PREFIX + text) <= room:
            return text, False
        text_room = room - _cost(SUMMARY_PREFIX)
        if text_room < MIN_PIECE_TOKENS:
            return None, False
        return truncate_to_tokens(text, text_room), True

    @staticmethod
    def _fit_passages(passages: Sequence[Passage], room: int) -> tuple[list[Passage], list[str], int]:
        """Passages in the given (best first) order, whole, within `room` tokens (the
        message's overhead and header included)."""
        if not passages:
            return [], [], 0
        fixed = _cost(SOURCES_HEADER)
        used = fixed
        chosen: list[Passage] = []
        left_out: list[str] = []
        for passage in passages:
            cost = estimate_tokens(passage.render()) + SEPARATOR_TOKENS
            if used + cost <= room:
                chosen.append(passage)
                used += cost
            else:
                left_out.append(passage.label)
        return chosen, left_out, used if chosen else 0

    @staticmethod
    def _fit_pages(pages: Sequence[PageText], room: int) -> tuple[list[str], dict[str, Any], int]:
        """Page blocks sharing `room` tokens fairly (the message's overhead and header
        included), each whole, cut with a note, or left out."""
        record: dict[str, Any] = {"included": [], "truncated": [], "left_out": []}
        if not pages:
            return [], record, 0
        fixed = _cost(PAGES_HEADER)
        heads = [page.heading() for page in pages]
        costs = [estimate_tokens(head) + estimate_tokens(page.text) + 2 * SEPARATOR_TOKENS
                 for head, page in zip(heads, pages, strict=True)]
        shares = fair_shares(costs, room - fixed)
        blocks: list[str] = []
        used = fixed
        for page, head, cost, share in zip(pages, heads, costs, shares, strict=True):
            if share >= cost:
                text = page.text
            else:
                text_room = share - estimate_tokens(head) - 2 * SEPARATOR_TOKENS
                if text_room < MIN_PIECE_TOKENS:
                    record["left_out"].append(page.url)
                    continue
                text = truncate_to_tokens(page.text, text_room)
                record["truncated"].append(page.url)
            block = f"{head}\n{text}"
            blocks.append(block)
            record["included"].append(page.url)
            used += estimate_tokens(block) + 2 * SEPARATOR_TOKENS
        return blocks, record, used if blocks else 0

    @staticmethod
    def _sources_message(passages: Sequence[Passage], page_blocks: Sequence[str]) -> str:
        parts = []
        if passages:
            parts.append(SOURCES_HEADER + "\n" + "\n\n".join(p.render() for p in passages))
        if page_blocks:
            parts.append(PAGES_HEADER + "\n" + "\n\n".join(page_blocks))
        return "\n\n".join(parts)

