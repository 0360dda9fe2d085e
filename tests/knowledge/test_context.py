"""The context builder: priority under pressure, caps, contiguity, history length, the record."""

from __future__ import annotations

import json
from itertools import pairwise

import pytest

from chat.history import MESSAGE_OVERHEAD_TOKENS, TRUNCATION_NOTE, Turn, build_messages, estimate_tokens
from knowledge.context import (
    PAGES_HEADER,
    SOURCES_HEADER,
    SUMMARY_PREFIX,
    ContextBuilder,
    PageText,
    Passage,
    Summary,
    fair_shares,
    turn_digest,
)

SYSTEM = "You are a test assistant."
USER = "What did the report say?"


def turns(n: int, words: int = 8) -> list[Turn]:
    return [
        Turn(role="user" if i % 2 == 0 else "assistant", content=f"turn {i} " + "word " * words, id=f"t{i}")
        for i in range(n)
    ]


def summary_through(history: list[Turn], index: int, text: str = "The user is called Ada and likes owls.") -> Summary:
    return Summary(text=text, through_id=history[index].id, turns=index + 1, updated_at="2026-01-01T00:00:00Z",
                   through_digest=turn_digest(history[index]))


def passages(n: int, words: int = 20) -> list[Passage]:
    return [Passage(label=f"[{i + 1}]", source="report.pdf", location=f"page {i + 1}",
                    text=f"passage {i + 1} " + "fact " * words, chunk_id=f"doc:{i}") for i in range(n)]


def page(url: str, words: int) -> PageText:
    return PageText(title=f"Page {url[-1]}", url=url, text="page text " * words)


def cost(messages: list[dict]) -> int:
    return sum(estimate_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS for m in messages)


def build(context_tokens: int, history=(), **kw):
    kw.setdefault("history_length", 100)
    kw.setdefault("max_tokens", 100)
    return ContextBuilder(context_tokens).build(SYSTEM, USER, list(history), **kw)


def kinds(ctx) -> list[str]:
    """What each message is: system, summary, sources, pages, turn, user."""
    out = []
    for i, m in enumerate(ctx.messages):
        content = m["content"]
        if i == len(ctx.messages) - 1:
            out.append("user")
        elif content == SYSTEM:
            out.append("system")
        elif content.startswith(SUMMARY_PREFIX):
            out.append("summary")
        elif m["role"] == "system":
            out.append("sources" if content.startswith(SOURCES_HEADER) else "pages")
        else:
            out.append("turn")
    return out


def test_a_tiny_budget_sends_the_system_prompt_and_the_user_message_only():
    history = turns(10, words=40)
    ctx = build(120, history, summary=summary_through(history, 3), passages=passages(2), pages=[page("http://a/1", 50)])
    assert kinds(ctx) == ["system", "user"]
    assert ctx.messages[-1] == {"role": "user", "content": USER}
    r = ctx.record
    assert r["budget"] == 60 and r["used"] == cost(ctx.messages) <= r["budget"]
    assert r["summary"] == {"included": False, "covers": 0, "truncated": False, "reason": "no_room"}
    assert r["passages"] == {"included": [], "left_out": ["[1]", "[2]"]}
    assert r["pages"] == {"included": [], "truncated": [], "left_out": ["http://a/1"]}
    assert r["turns"] == {"included": 0, "left_out": 10, "beyond_history_length": 0, "over_budget": 10,
                          "covered_by_summary": 0, "uncovered": 6}
    # The summary exists: only the turns after it are the summarizer's input.
    assert [t.id for t in ctx.uncovered] == [f"t{i}" for i in range(4, 10)]


def test_growing_budgets_add_summary_then_passages_then_pages_then_turns():
    history = turns(30, words=150)
    args = dict(summary=summary_through(history, 19), passages=passages(2, words=5), pages=[page("http://a/1", 20)])
    steps = []
    for context_tokens in range(100, 1000, 10):
        r = build(context_tokens, history, **args).record
        assert r["used"] <= r["budget"]
        step = (int(r["summary"]["included"]), len(r["passages"]["included"]), len(r["pages"]["included"]),
                r["turns"]["included"])
        if not steps or steps[-1] != step:
            steps.append(step)
    # Each element joins once what comes before it in the priority is all there, and stays.
    assert steps[:6] == [(0, 0, 0, 0), (1, 0, 0, 0), (1, 1, 0, 0), (1, 2, 0, 0), (1, 2, 1, 0), (1, 2, 1, 1)]
    assert all(later >= earlier for a, b in pairwise(steps) for earlier, later in zip(a, b, strict=True))
    assert steps[-1][3] >= 3


def test_a_summary_is_dropped_when_every_turn_it_covers_is_sent_anyway():
    history = turns(30)
    ctx = build(4000, history, summary=summary_through(history, 19), passages=passages(2), pages=[page("http://a/1", 20)])
    assert kinds(ctx) == ["system"] + ["turn"] * 30 + ["sources", "user"]
    assert ctx.record["summary"] == {"included": False, "covers": 0, "truncated": False, "reason": "not_needed"}
    assert ctx.uncovered == [] and ctx.summary is not None


def test_full_room_without_the_whole_history_keeps_the_summary_and_the_newest_turns():
    history = turns(40, words=40)
    ctx = build(700, history, summary=summary_through(history, 29), passages=passages(3, words=10),
                pages=[page("http://a/1", 10)])
    r = ctx.record
    assert r["summary"] == {"included": True, "covers": 30, "truncated": False}
    assert r["passages"] == {"included": ["[1]", "[2]", "[3]"], "left_out": []}
    assert r["pages"] == {"included": ["http://a/1"], "truncated": [], "left_out": []}
    sent = [m for m, k in zip(ctx.messages, kinds(ctx), strict=True) if k == "turn"]
    n = r["turns"]["included"]
    assert 2 <= n < 10 and [m["content"] for m in sent] == [t.content for t in history[-n:]]
    assert [m["role"] for m in sent] == [t.role for t in history[-n:]]
    assert r["turns"]["left_out"] == 40 - n and r["turns"]["over_budget"] == 40 - n
    assert r["turns"]["covered_by_summary"] == 30
    assert [t.id for t in ctx.uncovered] == [t.id for t in history[30:40 - n]]
    assert r["turns"]["uncovered"] == len(ctx.uncovered) == 10 - n
    sources = ctx.messages[-2]["content"]
    assert sources.startswith(SOURCES_HEADER + "\n[1] report.pdf, page 1: passage 1 fact")
    assert f"\n\n{PAGES_HEADER}\n### Page 1 (http://a/1)\npage text" in sources
    assert ctx.messages[1]["content"] == SUMMARY_PREFIX + "The user is called Ada and likes owls."
    assert ctx.summary is not None and ctx.summary.through_id == "t29"
    assert r["used"] == cost(ctx.messages) <= r["budget"]


def test_passages_are_capped_and_leave_room_for_the_last_exchange():
    history = turns(6, words=30)
    ctx = build(1200, history, passages=passages(30, words=20))
    r = ctx.record
    room = r["budget"] - (estimate_tokens(SYSTEM) + 4) - (estimate_tokens(USER) + 4)
    last_exchange = sum(estimate_tokens(t.content) + 4 for t in history[-2:])
    sources = next(m for m, k in zip(ctx.messages, kinds(ctx), strict=True) if k == "sources")
    assert estimate_tokens(sources["content"]) + 4 <= 0.4 * (room - last_exchange)
    assert r["passages"]["included"] == [f"[{i}]" for i in range(1, len(r["passages"]["included"]) + 1)]  # best first
    assert len(r["passages"]["left_out"]) == 30 - len(r["passages"]["included"]) > 0
    assert r["turns"]["included"] >= 2
    assert ctx.messages[-3]["content"] == history[-1].content  # the last exchange is there


def test_a_large_passage_is_skipped_and_a_smaller_later_one_still_fits():
    big = Passage("[1]", "a.pdf", "", "huge " * 2000, "a:0")
    small = Passage("[2]", "b.pdf", "", "small fact", "b:0")
    ctx = build(1000, [], passages=[big, small])
    assert ctx.record["passages"] == {"included": ["[2]"], "left_out": ["[1]"]}
    assert "[2] b.pdf: small fact" in ctx.messages[-2]["content"]


def test_pages_share_their_cap_fairly_and_are_cut_with_a_note():
    short, long1, long2 = page("http://a/1", 10), page("http://a/2", 3000), page("http://a/3", 3000)
    ctx = build(3000, turns(4), pages=[short, long1, long2])
    r = ctx.record
    assert r["pages"] == {"included": ["http://a/1", "http://a/2", "http://a/3"],
                          "truncated": ["http://a/2", "http://a/3"], "left_out": []}
    content = ctx.messages[-2]["content"]
    assert content.startswith(PAGES_HEADER + "\n### Page 1 (http://a/1)\n" + short.text + "\n\n### Page 2")
    assert content.count(TRUNCATION_NOTE) == 2
    block2 = content.split("### Page 2 (http://a/2)\n")[1].split("\n\n### Page 3")[0]
    block3 = content.split("### Page 3 (http://a/3)\n")[1]
    assert abs(estimate_tokens(block2) - estimate_tokens(block3)) <= 2  # equal shares
    room = r["budget"] - (estimate_tokens(SYSTEM) + 4) - (estimate_tokens(USER) + 4)
    assert estimate_tokens(content) + 4 <= 0.5 * room + 4
    assert r["turns"]["included"] == 4  # the turns were not starved


def test_a_page_that_would_be_a_stub_is_left_out():
    ctx = build(220, [], pages=[page("http://a/1", 500)])
    assert ctx.record["pages"] == {"included": [], "truncated": [], "left_out": ["http://a/1"]}
    assert kinds(ctx) == ["system", "user"]


def test_turns_are_contiguous_and_never_more_than_history_length():
    history = turns(10)
    history[7] = Turn(role="assistant", content="long " * 1000, id="t7")
    ctx = build(700, history)
    assert [m["content"] for m in ctx.messages[1:-1]] == [t.content for t in history[8:]]  # no jump past t7
    assert ctx.record["turns"]["over_budget"] == 8

    ctx = build(8000, turns(10), history_length=3)
    assert [m["content"] for m in ctx.messages[1:-1]] == [t.content for t in turns(10)[-3:]]
    assert ctx.record["turns"] == {"included": 3, "left_out": 7, "beyond_history_length": 7, "over_budget": 0,
                                   "covered_by_summary": 0, "uncovered": 7}
    assert [t.id for t in ctx.uncovered] == [f"t{i}" for i in range(7)]


def test_history_length_zero_sends_no_history_and_no_summary_and_summarizes_nothing():
    history = turns(6)
    ctx = build(8000, history, history_length=0, summary=summary_through(history, 1))
    assert kinds(ctx) == ["system", "user"]
    assert ctx.record["summary"]["reason"] == "history_off"
    assert ctx.uncovered == [] and ctx.summary is None


def test_a_summary_that_no_longer_matches_the_turns_is_not_used():
    history = turns(20)
    summary = summary_through(history, 9)
    edited = list(history)
    edited[9] = Turn(role="assistant", content="something else", id="t9")  # an edit keeps the id
    for current in (edited, history[:5], [Turn("user", t.content) for t in history]):
        ctx = build(300, current, summary=summary)
        assert ctx.record["summary"]["reason"] == "stale"
        assert ctx.summary is None
        assert ctx.uncovered == current[:len(current) - ctx.record["turns"]["included"]]
    assert build(300, history, summary=summary).record["summary"]["included"] is True


def test_a_huge_summary_is_cut_to_its_share_with_a_note():
    history = turns(20, words=40)
    ctx = build(1200, history, summary=summary_through(history, 15, text="detail " * 3000))
    r = ctx.record
    assert r["summary"]["included"] and r["summary"]["truncated"]
    assert ctx.messages[1]["content"].startswith(SUMMARY_PREFIX + "detail") and ctx.messages[1]["content"].endswith(
        TRUNCATION_NOTE)
    room = r["budget"] - (estimate_tokens(SYSTEM) + 4) - (estimate_tokens(USER) + 4)
    assert estimate_tokens(ctx.messages[1]["content"]) + 4 <= 0.5 * room
    assert r["turns"]["included"] > 0


def test_an_oversized_user_message_alone_is_cut_and_the_record_says_so():
    ctx = ContextBuilder(400).build(SYSTEM, "x" * 10_000, turns(4), history_length=10, max_tokens=100)
    assert ctx.messages[-1]["content"].endswith(TRUNCATION_NOTE)
    assert ctx.record["user_truncated"] is True and ctx.record["used"] <= ctx.record["budget"]
    assert kinds(ctx) == ["system", "user"]


def test_unicode_is_counted_per_character_and_cut_on_character_boundaries():
    history = [Turn("user", "你好，世界。" * 20, "u0"), Turn("assistant", "こんにちは🙂" * 20, "a0")]
    pages = [PageText("Ünïcødé 页面", "http://例子.测试/页", "中文内容。" * 400)]
    ctx = build(1200, history, pages=pages, passages=[Passage("[1]", "résumé.pdf", "page 2", "ça va 👍", "r:0")])
    r = ctx.record
    assert r["used"] <= r["budget"] and r["pages"]["truncated"] == ["http://例子.测试/页"]
    content = ctx.messages[-2]["content"]
    assert "[1] résumé.pdf, page 2: ça va 👍" in content and "### Ünïcødé 页面 (http://例子.测试/页)\n中文" in content
    json.dumps(ctx.record, ensure_ascii=False)  # JSON-safe
    content.encode("utf-8")  # no split surrogate


def test_build_messages_is_the_builder_without_summary_or_sources():
    history = turns(12)
    ctx = build(500, history, history_length=8)
    assert build_messages(SYSTEM, history, USER, max_messages=8, context_tokens=500, max_tokens=100) == ctx.messages


def test_summary_json_round_trip_and_tolerance_of_bad_stored_data():
    summary = Summary("text ✓", "m1", 12, "2026-01-01T00:00:00Z", "abcd")
    assert Summary.from_json(summary.as_json()) == summary
    assert Summary.from_json(json.dumps(summary.as_json())) == summary
    assert Summary.from_json({"text": "t", "through_id": None, "turns": 0}) == Summary("t", None, 0, "")
    for bad in (None, 3, "not json", "[1]", [], {}, {"text": ""}, {"text": "t", "turns": "3"},
                {"text": "t", "turns": True}, {"text": "t", "turns": -1}, {"text": "t", "turns": 1, "through_id": 5},
                {"text": 5, "turns": 1}, {"text": "t", "turns": 1, "updated_at": 7}):
        assert Summary.from_json(bad) is None, bad


@pytest.mark.parametrize("costs,room,expected", [
    ([10, 100, 100], 90, [10, 40, 40]),
    ([10, 20], 100, [10, 20]),
    ([50, 50, 50], 10, [3, 3, 4]),
    ([], 10, []),
    ([5], -3, [0]),
])
def test_fair_shares(costs, room, expected):
    shares = fair_shares(costs, room)
    assert shares == expected or sorted(shares) == sorted(expected)
    assert sum(shares) <= max(room, 0)
