"""The conversation, as Chainlit callbacks call it; `app.py` only wires these methods up.

One `ChatService` per process holds the configuration, the provider and the storage
client. Per-session state (the turns the model remembers) lives in a `ChatState` kept in
Chainlit's user session; it is deliberately not JSON-serialisable, so Chainlit's habit of
copying the user session into the thread metadata does not store the history twice (the
thread's steps are the history, and `resume` rebuilds the state from them).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import chainlit as cl
from chainlit.data import get_data_layer
from chainlit.input_widget import NumberInput, Select, Slider, Switch
from chainlit.logger import logger as chainlit_logger
from literalai import ChatGeneration

from knowledge.context import SUMMARY_KEY, ContextBuilder, PageText, Passage, Summary
from knowledge.summary import SummaryUpdates

from .attachments import included_passages, message_attachments, stored_attachments
from .config import ChatConfig
from .files import describe_attachment
from .history import Turn, turns_from_steps
from .prompts import PromptBook, load_prompts_async
from .providers import ChatRequest, LLMError, Provider, Stopwatch, Usage
from .saving import SavingNotice
from .thread_settings import ThreadSettings

if TYPE_CHECKING:
    from knowledge.service import Attachment, KnowledgeService

logger = chainlit_logger.getChild("Chat")

STATE_KEY = "chat_state"
# Receives each streamed piece of an answer with the answer's message id (the API's event stream).
TextSink = Callable[[str, str], Awaitable[None]]
MAX_TITLE_CHARS = 80


class ChatState:
    """What the model remembers in this session. Not JSON-serialisable on purpose."""

    __slots__ = ("prompts", "turns", "titled", "summary")

    def __init__(self, prompts: PromptBook, turns: list[Turn] | None = None, titled: bool = False,
                 summary: Summary | None = None):
        self.prompts = prompts
        self.turns: list[Turn] = turns or []
        self.titled = titled
        # The running summary of the older turns; the context builder checks that it still
        # matches `turns` (an edit that removes its last turn makes it stale).
        self.summary = summary

    def forget_from(self, message_id: str) -> None:
        """Drop the turn with this id and everything after it (the user edited a message)."""
        for i, turn in enumerate(self.turns):
            if turn.id == message_id:
                del self.turns[i:]
                return


class AssistantMessage(cl.Message):
    """A `cl.Message` whose step dict carries Chainlit's `generation` field."""

    generation: dict | None = None

    def to_dict(self):
        step = super().to_dict()
        step["generation"] = self.generation
        return step


def clean_title(text: str) -> str:
    title = text.strip().splitlines()[0] if text.strip() else ""
    title = re.sub(r"^(title\s*:\s*)", "", title, flags=re.IGNORECASE)
    title = title.strip().strip("\"'`*#").strip().rstrip(".!?:;,").strip()
    return title[:MAX_TITLE_CHARS].rstrip()


class ChatService:
    def __init__(self, config: ChatConfig, provider: Provider, storage: Any = None, data_layer: Any = None,
                 knowledge: KnowledgeService | None = None):
        self.config = config
        self.provider = provider
        self.storage = storage
        self._data_layer = data_layer
        self.knowledge = knowledge
        self._background: set[asyncio.Task] = set()
        self.summaries = SummaryUpdates(provider, config.context_tokens)
        self.saving = SavingNotice(data_layer)

    @property
    def data_layer(self) -> Any:
        """The data layer the app handed us, else Chainlit's configured one (tests, scripts)."""
        return self._data_layer if self._data_layer is not None else get_data_layer()

    # ---- helpers -------------------------------------------------------------------
    @property
    def author(self) -> str:
        # The browser loads the avatar at /avatars/<author>: letters, digits, space, `_.-` only.
        return "Offline assistant" if self.provider.offline else "Assistant"

    async def _prompts(self) -> PromptBook:
        return await load_prompts_async(self.config.prompts_file, self.config.default_prompt)

    async def prompts(self) -> PromptBook:
        """The prompt templates, re-read from their file (edits apply without a restart)."""
        return await self._prompts()

    def _state(self) -> ChatState | None:
        return cl.user_session.get(STATE_KEY)

    async def _ensure_state(self) -> ChatState:
        state = self._state()
        if state is None:
            state = ChatState(await self._prompts())
            cl.user_session.set(STATE_KEY, state)
        return state

    def settings_widgets(self, prompts: PromptBook, current: ThreadSettings) -> cl.ChatSettings:
        offline = " (offline: no LLM configured)" if self.provider.offline else ""
        return cl.ChatSettings(
            [
                Select(
                    id="model",
                    label=f"Model{offline}",
                    values=self.config.model_choices,
                    initial_value=current.model,
                    description=f"Provider: {self.provider.label}",
                ),
                Slider(
                    id="temperature",
                    label="Temperature",
                    initial=current.temperature,
                    min=0,
                    max=2,
                    step=0.1,
                    description="Higher values give more varied answers.",
                ),
                NumberInput(
                    id="max_tokens",
                    label="Max tokens per answer",
                    initial=current.max_tokens,
                    description="0 or less means no limit.",
                ),
                Slider(
                    id="history_length",
                    label="History length (messages)",
                    initial=current.history_length,
                    min=0,
                    max=100,
                    step=1,
                    description="How many earlier messages the model sees (as far as its context allows).",
                ),
                Select(
                    id="prompt",
                    label="Prompt template",
                    items={t.label: t.name for t in prompts.templates.values()},
                    initial_value=current.prompt,
                ),
                *self._knowledge_widgets(current),
            ]
        )

    def _knowledge_widgets(self, current: ThreadSettings) -> list:
        knowledge = self.knowledge
        if knowledge is None:
            return []
        widgets = []
        if knowledge.config.read_links:
            widgets.append(Switch(id="read_links", label="Read linked web pages", initial=current.read_links,
                                  description="Fetch the pages a message links and give their text to the model."))
        if knowledge.index is not None:
            widgets.append(Switch(id="all_documents", label="Search all my documents", initial=current.all_documents,
                                  description=f"Off: only this conversation's documents. Now {knowledge.mode}."))
        return widgets

    def _user_name(self) -> str:
        user = cl.user_session.get("user")
        if user is None:
            return "the user"
        return getattr(user, "display_name", None) or getattr(user, "identifier", None) or "the user"

    # ---- Chainlit callbacks ------------------------------------------------------------
    async def start(self) -> None:
        prompts = await self._prompts()
        cl.user_session.set(STATE_KEY, ChatState(prompts))
        await self.settings_widgets(prompts, ThreadSettings.defaults(self.config, prompts)).send()

    async def resume(self, thread: Mapping[str, Any]) -> None:
        state = await self.state_for(thread)
        prompts = state.prompts
        cl.user_session.set(STATE_KEY, state)
        # Chainlit restored the thread's settings from its metadata before calling us.
        current = ThreadSettings.from_values(cl.context.session.chat_settings or {}, self.config, prompts)
        await self.settings_widgets(prompts, current).send()

    async def settings_updated(self, values: Mapping[str, Any]) -> None:
        state = await self._ensure_state()
        current = ThreadSettings.from_values(values, self.config, state.prompts)
        cl.context.session.chat_settings.update(current.as_values())
        session = cl.context.session
        data_layer = self.data_layer
        if data_layer and session.has_first_interaction and session.thread_id:
            # Chainlit saves settings only on disconnect; save now so a crash keeps them.
            await data_layer.update_thread(thread_id=session.thread_id, metadata={"chat_settings": current.as_values()})

    async def on_message(self, message: cl.Message) -> AssistantMessage:
        state = await self._ensure_state()
        state.forget_from(message.id)
        settings = ThreadSettings.from_values(cl.context.session.chat_settings or {}, self.config, state.prompts)
        thread_id = cl.context.session.thread_id
        self.saving.watch(thread_id)
        answer = await self.turn(state, settings, message.content, await message_attachments(message),
                                 message_id=message.id)
        self.saving.watch(thread_id)
        return answer

    async def turn(self, state: ChatState, settings: ThreadSettings, text: str, attachments: Sequence[Attachment],
                   *, message_id: str, on_text: TextSink | None = None,
                   system_prompt: str | None = None) -> AssistantMessage:
        """A user message with its files, as the browser and the API send it: documents and
        linked pages read, passages retrieved (knowledge/), the answer, its sources."""
        from knowledge.service import Prepared

        knowledge = self.knowledge
        if knowledge is None:
            prepared = Prepared(blocks=[describe_attachment(a.name, a.mime, a.data, self.config.max_file_chars)
                                        for a in attachments])
        else:
            prepared = await knowledge.prepare(
                text, attachments, user=self._user_identifier(), thread_id=cl.context.session.thread_id,
                message_id=message_id, read_links=settings.read_links and knowledge.config.read_links,
                all_threads=settings.all_documents)
        user_text = "\n\n".join([text, *prepared.blocks]) if prepared.blocks else text
        answer = await self.reply(state, settings, user_text, message_id=message_id, title_source=text,
                                  on_text=on_text, system_prompt=system_prompt, passages=prepared.passages,
                                  pages=prepared.pages)
        if knowledge is not None and prepared.passages:
            footer = await knowledge.cite(answer, prepared.passages, included_passages(answer.generation))
            if footer and on_text is not None:  # the API's stream ends with the sources too
                await on_text(answer.id, footer)
        return answer

    def _user_identifier(self) -> str:
        user = cl.context.session.user
        return getattr(user, "identifier", None) or "(anonymous)"

    async def reply(
        self,
        state: ChatState,
        settings: ThreadSettings,
        user_text: str,
        *,
        message_id: str | None,
        title_source: str,
        on_text: TextSink | None = None,
        system_prompt: str | None = None,
        passages: Sequence[Passage] = (),
        pages: Sequence[PageText] = (),
    ) -> AssistantMessage:
        """One turn, the same for the browser and the API: the model's request built by the
        context builder (template, running summary, `passages`, `pages`, the remembered
        turns, `user_text`); the answer streamed (to the browser through Chainlit, and to
        `on_text` when given), stored as an assistant step with its generation record (what
        the context left out under `metadata.context`); the thread titled in the background
        after its first exchange, and its summary brought up to date in the background when
        enough older turns no longer fit. Runs inside a Chainlit context (a socket session,
        or the API's HTTP session)."""
        template = state.prompts.get(settings.prompt)
        user_name = self._user_name()
        system = template.render_system(user=user_name) if system_prompt is None else system_prompt
        context = ContextBuilder(self.config.context_tokens).build(
            system,
            template.render_user(user_text, user=user_name),
            state.turns,
            history_length=settings.history_length,
            max_tokens=settings.max_tokens_or_none,
            summary=state.summary,
            passages=passages,
            pages=pages,
        )
        request = ChatRequest(
            messages=context.messages,
            model=settings.model,
            temperature=settings.temperature,
            max_tokens=settings.max_tokens_or_none,
        )
        state.turns.append(Turn(role="user", content=user_text, id=message_id))
        answer = await self._answer(request, settings, on_text, context.record)
        if not answer.is_error:
            state.turns.append(Turn(role="assistant", content=answer.content, id=answer.id))
            thread_id = cl.context.session.thread_id
            if not state.titled:
                state.titled = True
                if self.config.generate_titles and not self.provider.offline:
                    self._spawn(self._title(thread_id, settings.model, title_source, answer.content, state))
            job = self.summaries.start(thread_id, settings.model, context, state.prompts, self.data_layer,
                                       self._summary_kept(state))
            if job is not None:
                self._spawn(job)
        return answer

    async def state_for(self, thread: Mapping[str, Any] | None) -> ChatState:
        """What the model remembers of a stored thread (None: a new one)."""
        prompts = await self._prompts()
        if thread is None:
            return ChatState(prompts)
        steps = thread.get("steps") or []
        user_messages = {step.get("id") for step in steps if step.get("type") == "user_message" and step.get("id")}
        attachments = await stored_attachments(thread.get("elements") or [], user_messages, self.storage, self.knowledge,
                                                self.config.max_file_chars)
        return ChatState(prompts, turns_from_steps(thread.get("steps") or [], attachments), titled=True,
                         summary=Summary.from_metadata(thread.get("metadata")))

    # ---- the model call ----------------------------------------------------------------
    async def _answer(self, request: ChatRequest, settings: ThreadSettings, on_text: TextSink | None = None,
                      context: dict | None = None) -> AssistantMessage:
        answer = AssistantMessage(content="", author=self.author)
        watch = Stopwatch()
        usage = Usage()
        model = request.model
        finish: str | None = None
        try:
            async for chunk in self.provider.stream(request):
                if chunk.text:
                    watch.mark_token()
                    await answer.stream_token(chunk.text)
                    if on_text is not None:
                        await on_text(answer.id, chunk.text)
                usage = chunk.usage or usage
                model = chunk.model or model
                finish = chunk.finish_reason or finish
        except LLMError as err:
            logger.warning("LLM call failed (%s, provider %s, model %s): %s", err.kind, err.provider, model, err.detail)
            partial = answer.content
            answer.is_error = True
            answer.content = (
                f"{partial}\n\n---\n**Error:** the answer was interrupted. {err.user_message}"
                if partial
                else f"**Error:** {err.user_message}"
            )
            answer.generation = self._generation(request, settings, model, usage, watch, partial, finish, err, context)
            await answer.send()
            return answer
        except asyncio.CancelledError:
            # The user pressed stop: keep what was streamed, marked as cancelled.
            answer.generation = self._generation(request, settings, model, usage, watch, answer.content, "cancelled",
                                                 context=context)
            if answer.content:
                await answer.send()
            raise
        if not answer.content:
            answer.content = "(The model returned an empty answer.)"
        answer.generation = self._generation(request, settings, model, usage, watch, answer.content, finish,
                                             context=context)
        await answer.send()
        return answer

    def _generation(
        self,
        request: ChatRequest,
        settings: ThreadSettings,
        model: str,
        usage: Usage,
        watch: Stopwatch,
        text: str,
        finish: str | None,
        error: LLMError | None = None,
        context: dict | None = None,
    ) -> dict:
        """Chainlit's `generation` dict (literalai `ChatGeneration`) for the assistant step.

        `duration` is in seconds and `ttFirstToken` in milliseconds (literalai's units). The
        prompt messages are not copied into every step (they are the thread itself); their
        count is in `metadata.messageCount`, and the context builder's record of what went
        in and what was left out (`knowledge.context`) in `metadata.context`.
        """
        duration = watch.elapsed
        status = "error" if error else ("cancelled" if finish == "cancelled" else "success")
        metadata: dict[str, Any] = {
            "status": status,
            "latencyMs": round(duration * 1000, 1),
            "finishReason": finish,
            "messageCount": len(request.messages),
            "usageEstimated": usage.estimated,
            "providerLabel": self.provider.label,
        }
        if error:
            metadata.update({"errorKind": error.kind, "httpStatus": error.status})
        if context is not None:
            metadata["context"] = context
        throughput = None
        if usage.completion_tokens and duration > 0:
            throughput = usage.completion_tokens / duration
        return ChatGeneration(
            provider=self.provider.name,
            model=model,
            error=error.user_message if error else None,
            settings={
                "model": request.model,
                "temperature": request.temperature,
                "max_tokens": request.max_tokens,
                "history_length": settings.history_length,
                "prompt": settings.prompt,
            },
            metadata=metadata,
            token_count=usage.total_tokens,
            input_token_count=usage.prompt_tokens,
            output_token_count=usage.completion_tokens,
            tt_first_token=round(watch.first_token * 1000, 1) if watch.first_token is not None else None,
            token_throughput_in_s=throughput,
            duration=duration,
            message_completion={"role": "assistant", "content": text},
        ).to_dict()

    # ---- titles ------------------------------------------------------------------------
    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("background chat task failed", exc_info=task.exception())

    async def _title(self, thread_id: str, model: str, question: str, answer: str, state: ChatState) -> str | None:
        """Name the thread after its first exchange. On failure the first message stays the name."""
        title_prompt = state.prompts.title
        request = ChatRequest(
            messages=[
                {"role": "system", "content": title_prompt.render_system()},
                {"role": "user", "content": title_prompt.render_user(question[:2000], answer=answer[:2000])},
            ],
            model=model,
            temperature=0.2,
            max_tokens=24,
        )
        try:
            completion = await self.provider.complete(request)
        except LLMError as err:
            logger.warning("title generation failed for thread %s (%s); keeping the first message as its name", thread_id, err)
            return None
        title = clean_title(completion.text)
        if not title:
            logger.warning("title generation for thread %s returned no usable text; keeping the name", thread_id)
            return None
        data_layer = self.data_layer
        if data_layer is None:
            return title
        await data_layer.update_thread(thread_id=thread_id, name=title)
        # The sidebar reloads its thread list on this event, so the new title shows at once.
        await cl.context.emitter.emit("first_interaction", {"interaction": title, "thread_id": thread_id})
        return title

    def _summary_kept(self, state: ChatState) -> Callable[[Summary], None]:
        def keep(summary: Summary) -> None:
            state.summary = summary
            # A resumed browser session holds the thread metadata as Chainlit loaded it and
            # writes it back on disconnect: its copy must follow, or the older summary returns.
            if cl.user_session.get(SUMMARY_KEY) is not None:
                cl.user_session.set(SUMMARY_KEY, summary.as_json())

        return keep

    async def wait_background(self) -> None:
        """Wait for pending title and summary tasks (tests and shutdown)."""
        if self._background:
            await asyncio.gather(*list(self._background))
