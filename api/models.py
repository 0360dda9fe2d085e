"""The API's request and response bodies (they are its OpenAPI schema)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Id = Field(min_length=1, max_length=255, pattern=r"^[^\x00]+$")


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Problem(BaseModel):
    type: str = "about:blank"
    title: str
    status: int
    detail: str
    errors: list[dict] | None = None


class ConversationSettings(Strict):
    """A conversation's chat settings; each left out keeps its current (or default) value."""

    model: str | None = Field(None, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=0, le=1_000_000, description="0: no limit")
    history_length: int | None = Field(None, ge=0, le=1000)
    prompt: str | None = Field(None, max_length=200)
    read_links: bool | None = Field(None, description="fetch the web pages a message links")
    all_documents: bool | None = Field(None, description="retrieve from the documents of all the user's conversations")


class Settings(BaseModel):
    model: str
    temperature: float
    max_tokens: int
    history_length: int
    prompt: str
    read_links: bool = True
    all_documents: bool = False


class Conversation(BaseModel):
    id: str
    name: str | None
    created_at: str | None
    tags: list[str] = []
    settings: Settings | None = None


class ConversationPage(BaseModel):
    data: list[Conversation]
    next_cursor: str | None


class NewConversation(Strict):
    name: str | None = Field(None, min_length=1, max_length=255)
    settings: ConversationSettings | None = None


class ConversationChange(Strict):
    name: str | None = Field(None, min_length=1, max_length=255)
    settings: ConversationSettings | None = None


class Usage(BaseModel):
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    total_tokens: int | None = None


class Rating(BaseModel):
    value: Literal[0, 1]
    comment: str | None = None


class Attachment(BaseModel):
    id: str
    name: str | None
    mime: str | None
    url: str | None = Field(description="a freshly signed link; None when it cannot be signed")


class Message(BaseModel):
    id: str
    role: Literal["user", "assistant", "tool"]
    text: str
    created_at: str | None
    model: str | None = None
    usage: Usage | None = None
    finish_reason: str | None = None
    status: str | None = Field(None, description="success, error or cancelled (assistant messages)")
    feedback: Rating | None = None
    attachments: list[Attachment] = []


class MessagePage(BaseModel):
    data: list[Message]
    next_cursor: str | None


class RatingChange(Strict):
    value: Literal[0, 1]
    comment: str | None = Field(None, max_length=10_000)


class FileInfo(BaseModel):
    id: str
    name: str
    mime: str
    size: int
    conversation_id: str


class HistoryMessage(Strict):
    role: Literal["user", "assistant"]
    content: str = Field(max_length=2_000_000)


class ChatCall(Strict):
    """Seed 004's chat call."""

    query: str = Field(min_length=1, description="the user's message")
    conversation_id: str | None = Field(None, min_length=1, max_length=255, pattern=r"^[^\x00]+$",
                                        description="continue this conversation; a new one when absent")
    history_len: int | None = Field(None, ge=0, le=1000, description="earlier messages the model sees")
    history: list[HistoryMessage] | None = Field(None, max_length=1000,
                                                 description="earlier messages to use instead of the stored ones")
    stream: bool = True
    model_name: str | None = Field(None, max_length=200)
    temperature: float | None = Field(None, ge=0, le=2)
    max_tokens: int | None = Field(None, ge=0, le=1_000_000, description="0: no limit")
    prompt_name: str | None = Field(None, max_length=200)
    file_ids: list[str] = Field(default_factory=list, max_length=10)


class ChatAnswer(BaseModel):
    text: str
    message_id: str
    conversation_id: str
    usage: Usage
    finish_reason: str | None = None


class TokenRequest(Strict):
    name: str = Field(min_length=1, max_length=100)
    expires_in_days: int | None = Field(None, ge=1, le=3650)


class TokenInfo(BaseModel):
    id: str
    name: str
    created_at: str
    last_used_at: str | None
    expires_at: str | None


class NewToken(TokenInfo):
    token: str = Field(description="shown once: store it now")


class TokenList(BaseModel):
    data: list[TokenInfo]


# The problem documents every route may answer (the OpenAPI document lists the rest).
ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": Problem} for status in (400, 401, 404, 413, 422, 429, 503)}
