"""The REST resources: conversations, their messages and files, and message ratings.

Everything goes through the configured data layer (the same calls the browser's sidebar,
thread view and rating buttons make), so it works on every backend, and the data layer's
ownership rules apply with the caller as the acting user.
"""

from __future__ import annotations

import uuid

from chainlit.types import Feedback, Pagination, ThreadFilter
from fastapi import APIRouter, Depends, File, Query, Request, Response, UploadFile
from fastapi.responses import JSONResponse

from datalayers.writes import is_valid_id

from . import models
from .auth import Caller
from .deps import caller, parts
from .problems import Problem
from .threads import check_owned, conversation, messages, owned_thread, resolve_settings, stored_settings

router = APIRouter(tags=["conversations"])
MAX_PAGE = 200


def _id(value: str, what: str = "conversation") -> str:
    """The id, or a 404 for one no backend can store (the same answer as for a missing one)."""
    if not is_valid_id(value):
        raise Problem(404, f"{what} not found")
    return value


@router.get("/conversations", response_model=models.ConversationPage, responses=models.ERRORS,
            summary="The caller's conversations, most recently active first")
async def list_conversations(request: Request, who: Caller = Depends(caller),
                             limit: int = Query(20, ge=1, le=MAX_PAGE), cursor: str | None = Query(None, max_length=4096),
                             search: str | None = Query(None, max_length=1000),
                             feedback: int | None = Query(None, ge=0, le=1, description="1: rated up, 0: rated down")):
    api = parts(request)
    page = await api.data_layer.list_threads(
        Pagination(first=limit, cursor=cursor or None),
        ThreadFilter(userId=who.user.id, search=search or None, feedback=feedback))  # type: ignore[arg-type,unused-ignore]
    prompts = await api.service.prompts()
    items = [conversation(thread, resolve_settings(api.service.config, prompts, stored_settings(thread), None))
             for thread in page.data]
    next_cursor = page.pageInfo.endCursor if page.pageInfo.hasNextPage else None
    return models.ConversationPage(data=items, next_cursor=next_cursor)


@router.post("/conversations", status_code=201, response_model=models.Conversation, responses=models.ERRORS,
             summary="Start a conversation")
async def create_conversation(request: Request, body: models.NewConversation | None = None,
                              who: Caller = Depends(caller)):
    api = parts(request)
    body = body or models.NewConversation()
    prompts = await api.service.prompts()
    settings = resolve_settings(api.service.config, prompts, {}, body.settings)
    conversation_id = str(uuid.uuid4())
    name = body.name or "New conversation"
    await api.data_layer.update_thread(thread_id=conversation_id, name=name, user_id=who.user.id,
                                       metadata={"chat_settings": settings.as_values()})
    thread = await api.data_layer.get_thread(conversation_id)
    result = conversation(thread or {"id": conversation_id, "name": name}, settings)
    return JSONResponse(result.model_dump(), status_code=201,
                        headers={"Location": f"{request.url.path.rstrip('/')}/{conversation_id}"})


@router.get("/conversations/{conversation_id}", response_model=models.Conversation, responses=models.ERRORS)
async def get_conversation(conversation_id: str, request: Request, who: Caller = Depends(caller)):
    api = parts(request)
    thread = await owned_thread(api.data_layer, who, _id(conversation_id))
    prompts = await api.service.prompts()
    return conversation(thread, resolve_settings(api.service.config, prompts, stored_settings(thread), None))


@router.patch("/conversations/{conversation_id}", response_model=models.Conversation, responses=models.ERRORS,
              summary="Rename a conversation or change its settings")
async def change_conversation(conversation_id: str, body: models.ConversationChange, request: Request,
                              who: Caller = Depends(caller)):
    api = parts(request)
    thread = await owned_thread(api.data_layer, who, _id(conversation_id))
    prompts = await api.service.prompts()
    settings = resolve_settings(api.service.config, prompts, stored_settings(thread), body.settings)
    metadata = {"chat_settings": settings.as_values()} if body.settings is not None else None
    if body.name is not None or metadata is not None:
        await api.data_layer.update_thread(thread_id=conversation_id, name=body.name, metadata=metadata)
        thread = await owned_thread(api.data_layer, who, conversation_id)
    return conversation(thread, settings)


@router.delete("/conversations/{conversation_id}", status_code=204, responses=models.ERRORS,
               summary="Delete a conversation with its messages and attachments")
async def delete_conversation(conversation_id: str, request: Request, who: Caller = Depends(caller)):
    api = parts(request)
    await check_owned(api.data_layer, who, _id(conversation_id))
    await api.data_layer.delete_thread(conversation_id)
    return Response(status_code=204)


@router.get("/conversations/{conversation_id}/messages", response_model=models.MessagePage, responses=models.ERRORS,
            summary="A conversation's messages, oldest first")
async def list_messages(conversation_id: str, request: Request, who: Caller = Depends(caller),
                        limit: int = Query(50, ge=1, le=MAX_PAGE), cursor: str | None = Query(None, max_length=4096)):
    api = parts(request)
    await check_owned(api.data_layer, who, _id(conversation_id))
    binding = f"{who.identifier}\0messages\0{conversation_id}"
    after = None
    if cursor:
        position = api.cursors.decode(binding, cursor)
        after = (position.get("at"), str(position.get("id") or ""))
    # One more than asked, to know whether another page follows; read from the store a page
    # at a time (an indexed range on SQL), never the whole conversation.
    steps, elements = await api.data_layer.page_messages(conversation_id, after, limit + 1)
    page = messages({"steps": steps[:limit], "elements": elements})
    more = len(steps) > limit
    next_cursor = api.cursors.encode(binding, {"at": steps[limit - 1].get("createdAt"), "id": steps[limit - 1]["id"]}) \
        if more else None
    return models.MessagePage(data=page, next_cursor=next_cursor)


@router.post("/conversations/{conversation_id}/files", status_code=201, response_model=models.FileInfo,
             responses=models.ERRORS,
             summary="Upload a file for the next message (name it in the chat call's file_ids)")
async def upload_file(conversation_id: str, request: Request, file: UploadFile = File(...),
                      who: Caller = Depends(caller)):
    api = parts(request)
    await check_owned(api.data_layer, who, _id(conversation_id))
    saved = await api.uploads.save(who.identifier, conversation_id, file.filename, file.content_type, file.file)
    info = models.FileInfo(id=saved.id, name=saved.name, mime=saved.mime, size=saved.size,
                           conversation_id=conversation_id)
    return JSONResponse(info.model_dump(), status_code=201)


async def _rated_thread(request: Request, who: Caller, message_id: str) -> str:
    api = parts(request)
    thread_id = await api.data_layer.message_thread(_id(message_id, "message"))
    if thread_id is None or await api.data_layer.get_thread_author(thread_id) != who.identifier:
        raise Problem(404, "message not found")
    return thread_id


@router.put("/messages/{message_id}/feedback", response_model=models.Rating, responses=models.ERRORS,
            summary="Rate a message (1: up, 0: down)")
async def rate_message(message_id: str, body: models.RatingChange, request: Request, who: Caller = Depends(caller)):
    thread_id = await _rated_thread(request, who, message_id)
    await parts(request).data_layer.upsert_feedback(
        Feedback(forId=message_id, threadId=thread_id, value=body.value, comment=body.comment))
    return models.Rating(value=body.value, comment=body.comment)


@router.delete("/messages/{message_id}/feedback", status_code=204, responses=models.ERRORS,
               summary="Remove a message's rating")
async def unrate_message(message_id: str, request: Request, who: Caller = Depends(caller)):
    api = parts(request)
    thread_id = await _rated_thread(request, who, message_id)
    thread = await owned_thread(api.data_layer, who, thread_id)
    step = next((s for s in thread.get("steps") or [] if s.get("id") == message_id), None)
    feedback_id = ((step or {}).get("feedback") or {}).get("id")
    if not feedback_id or not await api.data_layer.delete_feedback(feedback_id):
        raise Problem(404, "this message has no rating")
    return Response(status_code=204)
