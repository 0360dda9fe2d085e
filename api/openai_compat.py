"""An OpenAI-compatible endpoint (`/api/v1/openai/chat/completions`, `/api/v1/openai/models`),
so any OpenAI SDK client pointed at `…/api/v1/openai` with an API token as its key talks to
the same conversations.

Which conversation: the `X-Conversation-Id` header or a `conversation_id` body field
(`extra_body` in the SDK); without either a new one is created. The answer's headers name
it (`X-Conversation-Id`, and `X-Message-Id` for non-streamed answers).
What the model sees: the last message is the user's new message (stored, like every
turn); the client's system messages replace the prompt template's system text; when the
client sends earlier user/assistant messages (as OpenAI clients do) they are the history
for this call, otherwise a continued conversation's stored history is used.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

from fastapi import APIRouter, Depends, Header, Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import JSONResponse

from chat.history import Turn

from . import models
from .auth import Caller
from .chat import SSE_HEADERS, sse_event_schema, stream_events
from .deps import caller, logger, parts
from .problems import Problem, problem_response
from .turns import TurnPlan, answer_error, answer_usage, finish_reason, prepare, run_to_end

router = APIRouter(prefix="/openai", tags=["openai"])


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: str
    text: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    # Fields this endpoint does not use (user, seed, top_p, ...) are accepted and ignored.
    model_config = ConfigDict(extra="allow")
    model: str = Field(min_length=1, max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=1000)
    stream: bool = False
    stream_options: StreamOptions | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=1, le=1_000_000)
    max_completion_tokens: int | None = Field(None, ge=1, le=1_000_000)
    n: int | None = Field(None, ge=1, le=1)
    conversation_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00]+$")


def _text(message: ChatMessage) -> str:
    if message.content is None or isinstance(message.content, str):
        return message.content or ""
    if any(part.type != "text" for part in message.content):
        raise Problem(422, "only text content parts are supported")
    return "".join(part.text or "" for part in message.content)


def _split(body: CompletionRequest) -> tuple[str, str | None, list[Turn]]:
    """The new user message, the client's system text (None: the template's), earlier turns."""
    if getattr(body, "tools", None) or getattr(body, "functions", None):
        raise Problem(422, "tools and functions are not supported by this endpoint")
    *earlier, last = body.messages
    if last.role != "user" or not _text(last).strip():
        raise Problem(422, "the last message must be a non-empty user message")
    system = [_text(m) for m in earlier if m.role in ("system", "developer")]
    turns = []
    for m in earlier:
        if m.role in ("tool", "function"):
            raise Problem(422, "tool and function messages are not supported by this endpoint")
        if m.role in ("user", "assistant"):
            turns.append(Turn(role=m.role, content=_text(m)))
    return _text(last), "\n\n".join(system) if system else None, turns


def _usage(usage: models.Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens or 0, "completion_tokens": usage.completion_tokens or 0,
            "total_tokens": usage.total_tokens or 0}


def _finish(reason: str | None) -> str:
    return reason if reason in ("stop", "length", "content_filter") else "stop"


async def _chunks(plan: TurnPlan, model: str, include_usage: bool) -> AsyncIterator[bytes]:
    """The turn's events as OpenAI `chat.completion.chunk`s, ending with `[DONE]`."""
    created = int(time.time())
    ident = f"chatcmpl-{plan.user_message_id}"

    def chunk(delta: dict, reason: str | None = None, **extra: Any) -> bytes:
        body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": reason}], **extra}
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n".encode()

    first = True
    async for raw in stream_events(plan, logger):
        event, _, data_line = raw.decode().partition("\ndata: ")
        event = event.removeprefix("event: ")
        data = json.loads(data_line)
        if event == "delta":
            yield chunk({"role": "assistant", "content": data["text"]} if first else {"content": data["text"]})
            first = False
        elif event == "done":
            yield chunk({} if not first else {"role": "assistant", "content": ""}, _finish(data["finish_reason"]))
            if include_usage:
                body = {"id": ident, "object": "chat.completion.chunk", "created": created, "model": model,
                        "choices": [], "usage": _usage(models.Usage(**data["usage"]))}
                yield f"data: {json.dumps(body)}\n\n".encode()
        elif event == "error":
            error = {"message": data["detail"], "type": "api_error", "code": data["status"]}
            yield f"data: {json.dumps({'error': error}, ensure_ascii=False)}\n\n".encode()
    yield b"data: [DONE]\n\n"


@router.post("/chat/completions", summary="OpenAI-compatible chat completion (streamed with stream=true)",
             responses={200: {"content": {"text/event-stream": {"schema": sse_event_schema()}},
                              "description": "a chat.completion object, or chat.completion.chunk events"},
                        **models.ERRORS})
async def chat_completions(body: CompletionRequest, request: Request, who: Caller = Depends(caller),
                           x_conversation_id: str | None = Header(None, max_length=255)):
    api = parts(request)
    query, system, turns = _split(body)
    conversation_id = x_conversation_id or body.conversation_id
    call = models.ChatCall(query=query, conversation_id=conversation_id, stream=body.stream, model_name=body.model,
                           temperature=body.temperature, max_tokens=body.max_completion_tokens or body.max_tokens)
    # With no earlier turns from the client, a continued conversation uses its stored history.
    history = turns if turns or not conversation_id else None
    plan = await prepare(api, who, call, system_prompt=system, history=history)
    headers = {"X-Conversation-Id": plan.conversation_id}
    model = plan.settings.model
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(_chunks(plan, model, include_usage), media_type="text/event-stream",
                                 headers={**SSE_HEADERS, **headers})
    answer = await run_to_end(plan)
    headers["X-Message-Id"] = answer.id
    if answer.is_error:
        status, detail = answer_error(answer)
        retry = {"Retry-After": "5"} if status == 503 else {}
        return problem_response(status, detail, headers={**headers, **retry}, message_id=answer.id,
                                conversation_id=plan.conversation_id)
    return JSONResponse({
        "id": f"chatcmpl-{answer.id}", "object": "chat.completion", "created": int(time.time()), "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": answer.content},
                     "finish_reason": _finish(finish_reason(answer)), "logprobs": None}],
        "usage": _usage(answer_usage(answer)),
    }, headers=headers)


@router.get("/models", summary="The models this app offers (OpenAI-compatible)")
async def list_models(request: Request, who: Caller = Depends(caller)):
    config = parts(request).service.config
    return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "chainlit-persist"}
                                       for name in config.model_choices]}
