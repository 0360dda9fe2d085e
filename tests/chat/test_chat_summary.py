"""The running summary of long conversations, through the real ChatService: the SQLite data
layer, the openai SDK against the OpenAI-compatible test server, a small model context."""

from __future__ import annotations

import logging

import chainlit as cl
import pytest
from chainlit.user_session import user_sessions

from chat.config import load_chat_config
from chat.history import Turn
from chat.prompts import DEFAULT_SUMMARY, PromptError, load_prompts
from chat.providers import OfflineProvider, OpenAIProvider
from chat.service import STATE_KEY, ChatService
from knowledge.context import SUMMARY_PREFIX, ContextBuilder, Summary
from knowledge.summary import TURN_INPUT_TOKENS, UPDATE_TOKENS, UPDATE_TURNS, Summarizer, SummaryUpdates, needs_update
from tests.chat import test_chat_service as service_tests
from tests.servers.openai_compat import Fail, Reply, default_responder

# The chat service tests' fixtures: a Chainlit context over the SQLite data layer and storage.
stack, open_chat, start_chat = service_tests.stack, service_tests.open_chat, service_tests.start_chat
assistant_steps = service_tests.assistant_steps

SMALL_CONTEXT = "400"  # input budget 300 tokens: about a dozen of these turns


def message(i: int) -> str:
    return f"message {i}: remember that item {i} is a blue box"


def summarizing_responder(body: dict) -> str:
    """Streamed calls (answers) echo; whole calls (summaries, titles) get a numbered summary."""
    if body.get("stream"):
        return default_responder(body)
    summarizing_responder.calls += 1  # type: ignore[attr-defined]
    return f"Summary: SUMMARY {summarizing_responder.calls}: the user listed items."  # type: ignore[attr-defined]


def summary_requests(server) -> list[str]:
    """The user content of each summary request the server received."""
    return [r["messages"][1]["content"] for r in server.chat_requests(stream=False)
            if r["messages"][1]["content"].startswith("Earlier summary:")]


async def test_a_long_conversation_is_summarised_in_the_background_and_the_summary_used(start_chat, llm_server,
                                                                                     stack):
    layer = stack[0]
    summarizing_responder.calls = 0  # type: ignore[attr-defined]
    llm_server.responder = summarizing_responder
    chat = await start_chat(OpenAIProvider, LLM_CONTEXT_TOKENS=SMALL_CONTEXT)
    await chat.say(message(0))
    await chat.service.settings_updated({"history_length": 30})  # stores chat_settings in the metadata
    await layer.update_thread(thread_id=chat.thread_id, metadata={"custom": "kept"})
    for i in range(1, 20):
        await chat.say(message(i))  # waits for the background tasks too

    requests = summary_requests(llm_server)
    # One summary call every few turns, not every turn.
    assert 2 <= len(requests) <= 6, len(requests)
    first = requests[0]
    assert first.startswith("Earlier summary:\n(none)\n\nNew messages:\nUser: " + message(0))
    assert "Assistant: Echo: " + message(0) in first
    # Each update folds the next turns into the previous summary.
    assert requests[1].startswith("Earlier summary:\nSUMMARY 1: the user listed items.")
    assert message(0) not in requests[1]

    thread = await chat.thread()
    stored = Summary.from_metadata(thread["metadata"])
    assert stored is not None and stored.text == f"SUMMARY {len(requests)}: the user listed items."
    assert thread["metadata"]["custom"] == "kept"
    assert thread["metadata"]["chat_settings"]["history_length"] == 30
    state = cl.user_session.get(STATE_KEY)
    assert state.summary == stored
    ids = [t.id for t in state.turns]
    assert stored.through_id in ids and stored.turns == ids.index(stored.through_id) + 1

    # The next request carries the summary, and not the old turns it replaced.
    await chat.say("what was item 0?")
    sent = llm_server.chat_requests(stream=True)[-1]["messages"]
    assert sent[1] == {"role": "system", "content": SUMMARY_PREFIX + stored.text}
    assert not any(message(0) in m["content"] for m in sent)
    assert sent[-1]["content"] == "what was item 0?"
    step = assistant_steps(await chat.thread())[-1]
    record = step["generation"]["metadata"]["context"]
    assert record["summary"]["included"] is True and record["summary"]["covers"] == stored.turns
    assert record["turns"]["left_out"] >= stored.turns and record["turns"]["covered_by_summary"] == stored.turns
    assert record["used"] <= record["budget"] == 300


async def test_resume_restores_the_summary_and_a_disconnect_keeps_the_newest(stack, open_chat, start_chat, llm_server,
                                                                             make_config):
    layer, storage, _user = stack
    summarizing_responder.calls = 0  # type: ignore[attr-defined]
    llm_server.responder = summarizing_responder
    chat = await start_chat(OpenAIProvider, LLM_CONTEXT_TOKENS=SMALL_CONTEXT)
    for i in range(12):
        await chat.say(message(i))
    thread_id = chat.thread_id
    chat.close()
    thread = await layer.get_thread(thread_id)
    before = Summary.from_metadata(thread["metadata"])
    assert before is not None

    config = make_config(LLM_GENERATE_TITLES="false", LLM_CONTEXT_TOKENS=SMALL_CONTEXT)
    service = ChatService(config, OpenAIProvider(config), storage)
    assert (await service.state_for(thread)).summary == before
    second = open_chat(service, thread_id=thread_id)
    second.session.has_first_interaction = True
    user_sessions[second.session.id] = dict(thread["metadata"])  # what Chainlit does when a thread resumes
    await service.resume(thread)
    assert cl.user_session.get(STATE_KEY).summary == before
    await second.say("and now?")
    assert llm_server.chat_requests(stream=True)[-1]["messages"][1]["content"] == SUMMARY_PREFIX + before.text
    for i in range(12, 20):
        await second.say(message(i))
    newest = Summary.from_metadata((await second.thread())["metadata"])
    assert newest is not None and newest.turns > before.turns

    # Chainlit writes the user session into the thread metadata on disconnect.
    await layer.update_thread(thread_id=thread_id, metadata=second.session.to_persistable())
    assert Summary.from_metadata((await second.thread())["metadata"]) == newest


async def test_no_summary_for_the_offline_provider(stack, open_chat, llm_server):
    config = load_chat_config({"LLM_CONTEXT_TOKENS": SMALL_CONTEXT})
    service = ChatService(config, OfflineProvider(config, delay_seconds=0), stack[1])
    chat = open_chat(service)
    await service.start()
    for i in range(16):
        await chat.say(message(i))
    thread = await chat.thread()
    context = assistant_steps(thread)[-1]["generation"]["metadata"]["context"]
    assert context["turns"]["left_out"] > 2 and context["turns"]["uncovered"] == context["turns"]["left_out"]
    assert "summary" not in thread["metadata"]
    assert llm_server.chat_requests() == []


async def test_a_failed_summary_call_is_a_warning_and_the_conversation_goes_on(stack, open_chat, llm_server,
                                                                              make_config, caplog):
    layer, storage, _user = stack
    # A long thread written without a model, then continued with one: a summary is due
    # right after the first answer, so the failure can be scripted in order.
    offline_config = load_chat_config({"LLM_CONTEXT_TOKENS": SMALL_CONTEXT})
    offline = open_chat(ChatService(offline_config, OfflineProvider(offline_config, delay_seconds=0), storage))
    await offline.service.start()
    for i in range(10):
        await offline.say(message(i))
    thread_id = offline.thread_id
    offline.close()

    config = make_config(LLM_GENERATE_TITLES="false", LLM_CONTEXT_TOKENS=SMALL_CONTEXT)
    service = ChatService(config, OpenAIProvider(config), storage)
    chat = open_chat(service, thread_id=thread_id)
    chat.session.has_first_interaction = True
    await service.resume(await layer.get_thread(thread_id))
    llm_server.script(Reply("first answer"), Fail(500, message="summary backend down"))
    with caplog.at_level(logging.WARNING, logger="chainlit"):
        answer = await chat.say("continue please")
    assert not answer.is_error and answer.content == "first answer"
    (warning,) = [r for r in caplog.records if "summary of thread" in r.getMessage()]
    assert warning.levelno == logging.WARNING and thread_id in warning.getMessage() and "server" in warning.getMessage()
    assert "summary" not in (await chat.thread())["metadata"]
    assert cl.user_session.get(STATE_KEY).summary is None

    # The next turn answers, and the summary (still due) is made this time.
    answer = await chat.say("and again")
    assert not answer.is_error and answer.content.startswith("Echo: and again")
    stored = Summary.from_metadata((await chat.thread())["metadata"])
    assert stored is not None and stored.text.startswith("Echo: Earlier summary:")
    assert len(summary_requests(llm_server)) == 2


async def test_one_summary_call_per_thread_at_a_time(make_config, llm_server):
    config = make_config()
    provider = OpenAIProvider(config)
    updates = SummaryUpdates(provider, config.context_tokens)
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "word " * 300, f"t{i}") for i in range(8)]
    context = ContextBuilder(400).build("sys", "new", turns, history_length=20, max_tokens=None)
    assert len(context.uncovered) >= 2
    prompts = load_prompts(config.prompts_file)
    kept: list[Summary] = []
    first = updates.start("thread-1", "test-model", context, prompts, None, kept.append)
    assert first is not None
    assert updates.start("thread-1", "test-model", context, prompts, None, kept.append) is None
    other = updates.start("thread-2", "test-model", context, prompts, None, kept.append)
    assert other is not None
    await first
    await other
    assert len(kept) == 2 and kept[0].through_id is not None
    again = updates.start("thread-1", "test-model", context, prompts, None, kept.append)
    assert again is not None
    await again
    assert SummaryUpdates(OfflineProvider(config), 400).start("t", "m", context, prompts, None, kept.append) is None
    await provider.aclose()


def test_the_policy_waits_for_enough_uncovered_turns_or_tokens():
    short = [Turn("user" if i % 2 == 0 else "assistant", "short", f"t{i}") for i in range(UPDATE_TURNS)]
    summary = Summary("s", "t0", 1, "")
    for current in (None, summary):
        assert not needs_update(current, [])
        assert not needs_update(current, short[:-1])
        assert needs_update(current, short)
        assert needs_update(current, [Turn("user", "word " * (4 * UPDATE_TOKENS), "big")])
    assert not needs_update(None, [Turn("user", "x", None) for _ in range(10)])  # no id to anchor a summary


def test_the_summarizer_reads_the_oldest_turns_that_fit_each_cut():
    turns = [Turn("user", f"turn {i} " + "word " * 2000, f"t{i}") for i in range(20)]
    chosen, transcript = Summarizer.select(turns, 3 * TURN_INPUT_TOKENS + 10)
    assert [t.id for t in chosen] == ["t0", "t1", "t2"]
    assert transcript.startswith("User: turn 0 word") and transcript.count("truncated") == 3
    chosen, transcript = Summarizer.select(turns, 100)  # at least one turn, cut to fit
    assert [t.id for t in chosen] == ["t0"] and len(transcript) < 500
    chosen, _ = Summarizer.select([Turn("user", "a", "u1"), Turn("assistant", "b", None)], 1000)
    assert [t.id for t in chosen] == ["u1"]  # ends on a turn a summary can name


async def test_a_thread_deleted_meanwhile_is_not_recreated_by_its_summary(stack, make_config, llm_server):
    layer = stack[0]
    config = make_config()
    provider = OpenAIProvider(config)
    turns = [Turn("user" if i % 2 == 0 else "assistant", f"turn {i} " + "word " * 300, f"t{i}") for i in range(8)]
    context = ContextBuilder(400).build("sys", "new", turns, history_length=20, max_tokens=None)
    kept: list[Summary] = []
    job = SummaryUpdates(provider, config.context_tokens).start("a-deleted-thread", "test-model", context,
                                                               load_prompts(config.prompts_file), layer, kept.append)
    assert job is not None
    assert (await job) == kept[0]  # made, kept in the session's state, but not stored:
    assert await layer.get_thread("a-deleted-thread") is None
    assert len(summary_requests(llm_server)) == 1
    await provider.aclose()


def test_the_summary_prompt_is_read_from_the_file_like_the_title_prompt(tmp_path):
    shipped = load_prompts(load_chat_config({}).prompts_file).summary
    rendered = shipped.render_user("User: hi", previous="(none)")
    assert "User: hi" in rendered and "(none)" in rendered and "${" not in rendered
    path = tmp_path / "mine.toml"
    path.write_text('[templates.a]\nsystem = "x"\n')
    assert load_prompts(path).summary == DEFAULT_SUMMARY  # built in when the table is missing
    path.write_text('[templates.a]\nsystem = "x"\n[summary]\nsystem = "Sum up for ${user}."\n'
                    'user = "Before: ${previous}\\nNow: ${input}"\n')
    assert load_prompts(path).summary.render_user("t", previous="p") == "Before: p\nNow: t"
    path.write_text('[templates.a]\nsystem = "x"\n[summary]\nsystem = "Sum up ${answer}."\n')
    with pytest.raises(PromptError, match="summary.system: unknown placeholder"):
        load_prompts(path)
