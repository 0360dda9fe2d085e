"""History selection: last N messages, and only what fits the context window."""

from __future__ import annotations

from chat.history import (
    TRUNCATION_NOTE,
    Turn,
    answer_reserve,
    build_messages,
    estimate_tokens,
    truncate_to_tokens,
    turns_from_steps,
)


def test_estimate_tokens_counts_ascii_by_four_and_other_characters_one_each():
    assert estimate_tokens("") == 0
    assert estimate_tokens("abcd") == 1
    assert estimate_tokens("abcde") == 2
    assert estimate_tokens("你好") == 2
    assert estimate_tokens("ab你好") == 3


def test_truncate_to_tokens_keeps_a_prefix_and_says_so():
    text = "word " * 400
    cut = truncate_to_tokens(text, 50)
    assert cut.endswith(TRUNCATION_NOTE)
    assert text.startswith(cut[: -len(TRUNCATION_NOTE)])
    assert estimate_tokens(cut) <= 50
    assert truncate_to_tokens("short", 50) == "short"


def steps():
    return [
        {"id": "u1", "type": "user_message", "output": "hello"},
        {"id": "a1", "type": "assistant_message", "output": "hi!"},
        {"id": "r1", "type": "run", "output": "internal"},
        {"id": "u2", "type": "user_message", "output": "fail please"},
        {"id": "a2", "type": "assistant_message", "output": "**Error:** boom", "isError": True},
        {"id": "u3", "type": "user_message", "output": "see the file"},
        {"id": "a3", "type": "assistant_message", "output": ""},
        {"id": "u4", "type": "user_message", "output": "long story please"},
        {"id": "a4", "type": "assistant_message", "output": "Once upon", "generation": {"metadata": {"status": "cancelled"}}},
    ]


def test_turns_from_steps_keeps_messages_in_order_without_errors_stopped_answers_or_empties():
    turns = turns_from_steps(steps(), {"u3": ["--- Attached file: a.txt ---\nabc\n--- End of a.txt ---"]})
    assert [(t.id, t.role) for t in turns] == [
        ("u1", "user"), ("a1", "assistant"), ("u2", "user"), ("u3", "user"), ("u4", "user")
    ]
    assert turns[-2].content == "see the file\n\n--- Attached file: a.txt ---\nabc\n--- End of a.txt ---"


def history(n: int) -> list[Turn]:
    return [Turn(role="user" if i % 2 == 0 else "assistant", content=f"message {i}", id=str(i)) for i in range(n)]


def test_build_messages_sends_only_the_last_n_messages():
    msgs = build_messages("sys", history(10), "new", max_messages=4, context_tokens=8192, max_tokens=None)
    assert msgs[0] == {"role": "system", "content": "sys"}
    assert [m["content"] for m in msgs[1:]] == ["message 6", "message 7", "message 8", "message 9", "new"]


def test_build_messages_with_zero_history_sends_no_earlier_turns():
    msgs = build_messages("sys", history(10), "new", max_messages=0, context_tokens=8192, max_tokens=None)
    assert [m["content"] for m in msgs] == ["sys", "new"]


def test_build_messages_drops_oldest_turns_that_do_not_fit_the_context():
    long_turns = [Turn(role="user", content="x" * 6000, id=str(i)) for i in range(5)]  # 1500 tokens each
    msgs = build_messages("sys", long_turns, "new", max_messages=50, context_tokens=4096, max_tokens=1000)
    # 4096 - 1000 reserved for the answer leaves room for the newest two of the five old turns.
    assert len(msgs) == 1 + 2 + 1
    assert [m["content"] for m in msgs[1:3]] == [long_turns[3].content, long_turns[4].content]
    total = sum(estimate_tokens(m["content"]) + 4 for m in msgs)
    assert total <= 4096 - answer_reserve(4096, 1000)


def test_build_messages_truncates_a_new_message_larger_than_the_context():
    msgs = build_messages("sys", history(4), "y" * 100_000, max_messages=10, context_tokens=2048, max_tokens=None)
    assert msgs[-1]["content"].endswith(TRUNCATION_NOTE)
    assert [m["role"] for m in msgs] == ["system", "user"]  # nothing else fits


def test_answer_reserve_uses_max_tokens_or_a_default_share():
    assert answer_reserve(8192, None) == 1024
    assert answer_reserve(1024, None) == 256
    assert answer_reserve(8192, 300) == 300
    assert answer_reserve(8192, 100_000) == 4096
