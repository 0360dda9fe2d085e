"""`POST /api/v1/chat`: seed 004's chat call, answered as server-sent events or as JSON.

Stream events (`text/event-stream`), each `event: <name>` with a JSON `data:` line:

* `start` — `{conversation_id, user_message_id}`, before the model answers;
* `delta` — `{text, message_id, conversation_id}`, a piece of the answer;
* `done` — `{message_id, conversation_id, text, usage, finish_reason}`, the answer is stored;
* `error` — `{status, detail, message_id, conversation_id}`; the failed answer is stored as
  an error message, as in the browser. A stream always ends with `done` or `error`.

A client that disconnects mid-stream stops the model; the partial answer is stored,
marked cancelled (its generation's status), as when a browser user presses stop.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse
from starlette.responses import JSONResponse

from . import models
from .auth import Caller
from .deps import caller, logger, parts
from .problems import Problem, as_problem, problem_response
from .turns import TurnPlan, answer_error, answer_usage, finish_reason, prepare, run_to_end

router = APIRouter(tags=["chat"])


def sse_event_schema(*events: str) -> dict:
    """One server-sent event (its `event` name and its `data` line), for the OpenAPI document."""
    event: dict[str, Any] = {"type": "string"}
    if events:
        event["enum"] = list(events)
    return {"type": "object", "required": ["data"],
            "properties": {"event": event, "data": {"type": "string", "description": "JSON"}}}
END = object()
SSE_HEADERS = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


async def stream_events(plan: TurnPlan, logger) -> AsyncIterator[bytes]:
    """The turn's events; runs the turn in a task so a disconnect (this generator being
    closed) stops the model and stores the partial answer."""
    queue: asyncio.Queue = asyncio.Queue()
    conversation_id = plan.conversation_id

    async def on_text(message_id: str, text: str) -> None:
        queue.put_nowait(sse("delta", {"text": text, "message_id": message_id, "conversation_id": conversation_id}))

    async def produce() -> None:
        try:
            answer = await plan.run(on_text)
            if answer.is_error:
                status, detail = answer_error(answer)
                queue.put_nowait(sse("error", {"status": status, "detail": detail, "message_id": answer.id,
                                               "conversation_id": conversation_id}))
            else:
                queue.put_nowait(sse("done", {"message_id": answer.id, "conversation_id": conversation_id,
                                              "text": answer.content, "usage": answer_usage(answer).model_dump(),
                                              "finish_reason": finish_reason(answer)}))
        except Exception as exc:  # the database refused the turn: said in the stream, and logged
            problem = as_problem(exc) or Problem(500, "internal error; it has been logged")
            log = logger.warning if problem.status < 500 or problem.status == 503 else logger.error
            log("API chat in conversation %s failed: %s", conversation_id, exc, exc_info=problem.status == 500)
            queue.put_nowait(sse("error", {"status": problem.status, "detail": problem.detail, "message_id": None,
                                           "conversation_id": conversation_id}))
        finally:
            queue.put_nowait(END)

    yield sse("start", {"conversation_id": conversation_id, "user_message_id": plan.user_message_id})
    task = asyncio.create_task(produce())
    try:
        while (item := await queue.get()) is not END:
            yield item
    finally:
        if not task.done():  # the client went away: stop the model, keep what it said
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)


@router.post("/chat", summary="Send a message and get the answer (streamed by default)",
             response_model=models.ChatAnswer,
             responses={200: {"content": {"text/event-stream": {"schema": sse_event_schema("start", "delta", "done", "error")}},
                              "description": "the answer (JSON with stream=false, else server-sent events)"},
                        **models.ERRORS})
async def chat(call: models.ChatCall, request: Request, who: Caller = Depends(caller)):
    api = parts(request)
    plan = await prepare(api, who, call)
    if call.stream:
        return StreamingResponse(stream_events(plan, logger), media_type="text/event-stream",
                                 headers=SSE_HEADERS)
    answer = await run_to_end(plan)
    if answer.is_error:
        status, detail = answer_error(answer)
        headers = {"Retry-After": "5"} if status == 503 else None
        return problem_response(status, detail, headers=headers, message_id=answer.id,
                                conversation_id=plan.conversation_id)
    return JSONResponse(models.ChatAnswer(text=answer.content, message_id=answer.id, conversation_id=plan.conversation_id,
                                          usage=answer_usage(answer), finish_reason=finish_reason(answer)).model_dump())
