"""The conversation end to end below the browser: Chainlit context, the real SQLite data
layer and local file storage, the real SDKs against the OpenAI-compatible test server."""

from __future__ import annotations

import asyncio
import uuid

import chainlit as cl
import chainlit.data as cl_data
import pytest
from chainlit.context import ChainlitContext, context_var
from chainlit.emitter import BaseChainlitEmitter
from chainlit.session import HTTPSession

from chat.providers import LangChainProvider, OfflineProvider, OpenAIProvider
from chat.service import ChatService
from chat.webui import AVATAR_NAME
from settings import load_settings
from tests.servers.openai_compat import Fail, Reply, Stall, count_tokens


class RecordingEmitter(BaseChainlitEmitter):
    """Chainlit's no-op emitter, remembering what would have gone to the browser."""

    def __init__(self, session):
        super().__init__(session)
        self.events: list[tuple[str, object]] = []

    async def emit(self, event, data):
        self.events.append((event, data))

    async def stream_start(self, step_dict):
        self.events.append(("stream_start", dict(step_dict)))

    async def send_token(self, id, token, is_sequence=False, is_input=False):
        self.events.append(("token", token))

    async def send_step(self, step_dict):
        self.events.append(("new_message", dict(step_dict)))

    def set_chat_settings(self, settings):  # synchronous in Chainlit's real emitter too
        self.session.chat_settings = settings


async def drain() -> None:
    """Let Chainlit's fire-and-forget persistence tasks finish."""
    for _ in range(50):
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()]
        if not pending:
            return
        await asyncio.wait(pending, timeout=5)
    raise AssertionError("background tasks did not finish")


@pytest.fixture
async def stack(tmp_path):
    settings = load_settings({"APP_DATA_DIR": str(tmp_path)}, dotenv=False)
    storage = settings.build_storage()
    layer = settings.build_data_layer(storage=storage)
    saved = (cl_data._data_layer, getattr(cl_data, "_data_layer_initialized", None))
    cl_data._data_layer = layer
    if saved[1] is not None:
        cl_data._data_layer_initialized = True
    user = await layer.create_user(cl.User(identifier=f"tester-{uuid.uuid4().hex[:6]}"))
    yield layer, storage, user
    await drain()
    await layer.close()
    await storage.close()
    cl_data._data_layer = saved[0]
    if saved[1] is not None:
        cl_data._data_layer_initialized = saved[1]


class Chat:
    """One browser session: its own Chainlit context over a thread."""

    def __init__(self, service: ChatService, layer, user, thread_id: str | None = None):
        self.service = service
        self.layer = layer
        self.user = user
        self.session = HTTPSession(
            id=str(uuid.uuid4()), thread_id=thread_id or str(uuid.uuid4()), client_type="webapp", user=user
        )
        self.emitter = RecordingEmitter(self.session)
        self.context = ChainlitContext(self.session, emitter=self.emitter)
        self.previous = context_var.get(None)
        context_var.set(self.context)

    def close(self):
        # Not `reset(token)`: pytest-asyncio may tear down in another contextvars Context.
        context_var.set(self.previous)

    @property
    def thread_id(self) -> str:
        return self.session.thread_id

    async def say(self, text: str, elements=()) -> cl.Message:
        """What Chainlit does for a user message: store it (and its files), name the thread."""
        message = cl.Message(content=text, type="user_message", author=self.user.identifier, elements=list(elements))
        await message.send()
        if not self.session.has_first_interaction:
            self.session.has_first_interaction = True
            await self.layer.update_thread(thread_id=self.thread_id, name=text, user_id=self.user.id)
        answer = await self.service.on_message(message)
        await self.service.wait_background()
        await drain()
        return answer

    async def thread(self):
        await drain()
        return await self.layer.get_thread(self.thread_id)


@pytest.fixture
def open_chat(stack):
    layer, _storage, user = stack
    chats = []

    def factory(service, thread_id=None) -> Chat:
        chat = Chat(service, layer, user, thread_id)
        chats.append(chat)
        return chat

    yield factory
    for chat in reversed(chats):
        chat.close()


@pytest.fixture
def start_chat(stack, open_chat, make_config):
    """`await start_chat(provider_cls, **env)`: a started chat session on a new thread.
    Titles are off unless `LLM_GENERATE_TITLES` says otherwise."""

    async def factory(provider_cls=OpenAIProvider, **env: str) -> Chat:
        env.setdefault("LLM_GENERATE_TITLES", "false")
        config = make_config(**env)
        chat = open_chat(ChatService(config, provider_cls(config), stack[1]))
        await chat.service.start()
        return chat

    return factory


def assistant_steps(thread):
    return [s for s in thread["steps"] if s["type"] == "assistant_message"]


@pytest.mark.parametrize("provider_cls", [OpenAIProvider, LangChainProvider])
async def test_streamed_answer_is_stored_with_its_generation(provider_cls, start_chat, llm_server):
    chat = await start_chat(provider_cls)
    llm_server.script(Reply("Hello human, nice day", chunks=["Hello", " human,", " nice", " day"]))

    answer = await chat.say("hi model")

    tokens = [data for event, data in chat.emitter.events if event == "token"]
    starts = [data for event, data in chat.emitter.events if event == "stream_start"]
    assert len(starts) == 1 and starts[0]["output"] == "Hello"  # the first token opens the stream
    assert tokens == [" human,", " nice", " day"]
    assert answer.content == "Hello human, nice day" and not answer.is_error

    thread = await chat.thread()
    (step,) = assistant_steps(thread)
    assert step["output"] == "Hello human, nice day"
    assert not step.get("isError")
    gen = step["generation"]
    sent = llm_server.chat_requests(stream=True)[-1]
    prompt_tokens = sum(count_tokens(m["content"]) for m in sent["messages"])
    assert gen["provider"] == provider_cls.name
    assert gen["model"] == "test-model"
    assert (gen["inputTokenCount"], gen["outputTokenCount"], gen["tokenCount"]) == (prompt_tokens, 4, prompt_tokens + 4)
    assert gen["duration"] > 0 and gen["ttFirstToken"] is not None
    assert gen["error"] is None
    assert gen["metadata"]["status"] == "success"
    assert gen["metadata"]["usageEstimated"] is False
    assert gen["settings"]["temperature"] == pytest.approx(0.7)
    assert gen["messageCompletion"] == {"role": "assistant", "content": "Hello human, nice day"}


async def test_model_receives_earlier_turns_and_attached_text(start_chat, llm_server, tmp_path):
    chat = await start_chat(OpenAIProvider)
    await chat.say("my name is Ada")
    notes = tmp_path / "notes.md"
    notes.write_text("# Notes\nThe launch code is 1234.\n")
    picture = tmp_path / "pic.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 32)
    await chat.say(
        "what is in my files?",
        elements=[
            cl.File(name="notes.md", path=str(notes), mime="text/markdown"),
            cl.File(name="pic.png", path=str(picture), mime="image/png"),
        ],
    )

    sent = llm_server.chat_requests(stream=True)[-1]["messages"]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "my name is Ada"
    assert sent[2]["content"].startswith("Echo: my name is Ada")
    assert "what is in my files?" in sent[3]["content"]
    assert "The launch code is 1234." in sent[3]["content"]
    assert "[Attached file: pic.png (image/png, 40 bytes)" in sent[3]["content"]
    assert "\x89PNG" not in sent[3]["content"]

    thread = await chat.thread()
    assert sorted(e["name"] for e in thread["elements"]) == ["notes.md", "pic.png"]


@pytest.mark.parametrize(
    "failure,kind,text",
    [
        (Fail(429, message="slow down"), "rate_limit", "rate-limiting"),
        (Fail(500), "server", "internal error"),
        (Fail(401, message="Incorrect API key"), "auth", "OPENAI_API_KEY"),
        (Stall(seconds=3), "timeout", "did not answer in time"),
    ],
)
async def test_llm_errors_are_shown_stored_and_the_thread_stays_usable(failure, kind, text, start_chat, llm_server):
    chat = await start_chat(OpenAIProvider, LLM_TIMEOUT_SECONDS="0.5")
    llm_server.script(failure)

    answer = await chat.say("first try")
    assert answer.is_error
    assert text in answer.content and answer.content.startswith("**Error:**")

    answer2 = await chat.say("second try")
    assert not answer2.is_error
    # The failed turn's question is still context; the error text never is.
    second = llm_server.chat_requests(stream=True)[-1]["messages"]
    assert [m["content"] for m in second[1:]] == ["first try", "second try"]

    thread = await chat.thread()
    failed, ok = assistant_steps(thread)
    assert failed["isError"] is True and text in failed["output"]
    assert failed["generation"]["metadata"]["status"] == "error"
    assert failed["generation"]["metadata"]["errorKind"] == kind
    assert failed["generation"]["error"] == answer.content.removeprefix("**Error:** ")
    assert not ok.get("isError") and ok["generation"]["metadata"]["status"] == "success"


async def test_interrupted_stream_keeps_the_partial_answer_marked_as_error(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider, LLM_TIMEOUT_SECONDS="0.5")
    llm_server.script(Stall(seconds=3, after_chunks=2, text="partial answer here"))
    answer = await chat.say("tell me")
    assert answer.is_error
    assert answer.content.startswith("partial answer\n\n---\n**Error:** the answer was interrupted.")
    (step,) = assistant_steps(await chat.thread())
    assert step["isError"] is True
    assert step["generation"]["messageCompletion"]["content"] == "partial answer"


async def test_resume_rebuilds_history_from_the_stored_thread(stack, open_chat, llm_server, make_config, tmp_path):
    layer, storage, _user = stack
    config = make_config(LLM_GENERATE_TITLES="false")
    first = open_chat(ChatService(config, OpenAIProvider(config), storage))
    await first.service.start()
    await first.say("remember the word giraffe")
    doc = tmp_path / "list.txt"
    doc.write_text("apples, pears")
    await first.say("and this list", elements=[cl.File(name="list.txt", path=str(doc), mime="text/plain")])
    thread_id = first.thread_id
    first.close()

    # A new process (fresh service, no memory) resumes the thread.
    resumed_service = ChatService(config, OpenAIProvider(config), storage)
    second = open_chat(resumed_service, thread_id=thread_id)
    second.session.has_first_interaction = True
    await resumed_service.resume(await layer.get_thread(thread_id))
    await second.say("what was the word?")

    sent = [m["content"] for m in llm_server.chat_requests(stream=True)[-1]["messages"]]
    assert sent[1] == "remember the word giraffe"
    assert sent[2].startswith("Echo: remember the word giraffe")
    assert sent[3].startswith("and this list") and "apples, pears" in sent[3]
    assert sent[4].startswith("Echo: and this list")
    assert sent[5] == "what was the word?"


async def test_thread_settings_drive_the_call_and_are_saved(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider)
    service = chat.service
    for i in range(3):
        await chat.say(f"message {i}")

    await service.settings_updated(
        {"model": "other-model", "temperature": 1.2, "max_tokens": 64, "history_length": 2, "prompt": "concise"}
    )
    await chat.say("last")
    sent = llm_server.chat_requests(stream=True)[-1]
    assert sent["model"] == "other-model"
    assert sent["temperature"] == pytest.approx(1.2)
    assert sent["max_tokens"] == 64
    assert sent["messages"][0]["content"].startswith("You are a terse assistant.")
    assert [m["content"] for m in sent["messages"][1:]] == ["message 2", "Echo: message 2 (earlier messages: 4)", "last"]

    await service.settings_updated({"max_tokens": -1, "model": "not-offered", "prompt": "nope"})
    await chat.say("unlimited")
    sent = llm_server.chat_requests(stream=True)[-1]
    assert "max_tokens" not in sent
    assert sent["model"] == "test-model"  # a model the operator does not offer falls back
    assert sent["messages"][0]["content"].startswith("You are a helpful, precise assistant")

    thread = await chat.thread()
    assert thread["metadata"]["chat_settings"]["max_tokens"] == -1


async def test_title_is_generated_after_the_first_exchange(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider, LLM_GENERATE_TITLES="true")
    llm_server.script(Reply("Paris is the capital."), Reply('Title: "Capital of France."'))
    await chat.say("what is the capital of France?")

    thread = await chat.thread()
    assert thread["name"] == "Capital of France"
    (title_request,) = llm_server.chat_requests(stream=False)
    assert "what is the capital of France?" in title_request["messages"][1]["content"]
    assert "Paris is the capital." in title_request["messages"][1]["content"]
    assert ("first_interaction", {"interaction": "Capital of France", "thread_id": chat.thread_id}) in chat.emitter.events

    await chat.say("and of Spain?")  # only the first exchange is titled
    assert len(llm_server.chat_requests(stream=False)) == 1


async def test_failed_title_keeps_the_first_message_as_name(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider, LLM_GENERATE_TITLES="true")
    llm_server.script(Reply("Sure."), Fail(503))
    await chat.say("hello there")
    assert (await chat.thread())["name"] == "hello there"


async def test_offline_provider_answers_labelled_without_titles(stack, open_chat, llm_server):
    from chat.config import load_chat_config

    _layer, storage, _user = stack
    config = load_chat_config({})
    provider = OfflineProvider(config, delay_seconds=0)
    service = ChatService(config, provider, storage)
    chat = open_chat(service)
    await service.start()
    answer = await chat.say("anyone there?")
    assert answer.author == "Offline assistant"
    assert AVATAR_NAME.match(answer.author)  # else the browser's /avatars/<author> answers 400
    assert answer.content.startswith("**Offline mode**")
    thread = await chat.thread()
    assert thread["name"] == "anyone there?"
    (step,) = assistant_steps(thread)
    assert step["generation"]["provider"] == "offline"
    assert step["generation"]["metadata"]["usageEstimated"] is True
    assert llm_server.chat_requests() == []


async def test_settings_panel_offers_models_and_prompt_templates(stack, open_chat, make_config):
    _layer, storage, _user = stack
    config = make_config()
    chat = open_chat(ChatService(config, OpenAIProvider(config), storage))
    await chat.service.start()
    (widgets,) = [data for event, data in chat.emitter.events if event == "chat_settings"]
    by_id = {w["id"]: w for w in widgets}
    assert [i["value"] for i in by_id["model"]["items"]] == ["test-model", "other-model"]
    assert {i["value"] for i in by_id["prompt"]["items"]} >= {"assistant", "concise", "translator"}
    assert by_id["max_tokens"]["initial"] == 0
    assert chat.session.chat_settings["history_length"] == 20


async def test_editing_a_message_makes_the_model_forget_the_turns_after_it(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider)
    service = chat.service
    await chat.say("my favourite colour is red")
    await chat.say("and my pet is a cat")
    state = cl.user_session.get("chat_state")
    assert len(state.turns) == 4

    # Chainlit's edit: the same user message id comes back with new content.
    edited = cl.Message(content="my favourite colour is blue", type="user_message", author="tester")
    edited.id = state.turns[0].id
    await service.on_message(edited)
    sent = [m["content"] for m in llm_server.chat_requests(stream=True)[-1]["messages"]]
    assert sent[1:] == ["my favourite colour is blue"]
    assert [t.content for t in state.turns][0] == "my favourite colour is blue"
    assert len(state.turns) == 2


async def test_stop_keeps_the_streamed_part_marked_cancelled(start_chat, llm_server):
    chat = await start_chat(OpenAIProvider)
    llm_server.script(Reply("one two three four five six", chunk_delay=0.3))
    message = cl.Message(content="count slowly", type="user_message", author="tester")
    await message.send()
    task = asyncio.create_task(chat.service.on_message(message))
    while not any(event == "token" for event, _ in chat.emitter.events):  # the stream has begun
        await asyncio.sleep(0.05)
    task.cancel()  # what Chainlit's stop button does to the running on_message task
    with pytest.raises(asyncio.CancelledError):
        await task
    (step,) = assistant_steps(await chat.thread())
    assert step["output"] and "one two three four five six".startswith(step["output"])
    assert step["output"] != "one two three four five six"
    assert step["generation"]["metadata"]["status"] == "cancelled"
    state = cl.user_session.get("chat_state")
    assert [t.role for t in state.turns] == ["user"]  # an unfinished answer is not context
