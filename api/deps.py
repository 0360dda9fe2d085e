"""What every route needs: the app's parts (one `ApiParts` per app) and the caller."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from chainlit.logger import logger as chainlit_logger
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from chat.api_tokens import ApiTokens
from chat.service import ChatService
from datalayers.paging import CursorCodec

from .auth import Authenticator, Caller
from .uploads import PendingUploads

logger = chainlit_logger.getChild("API")


@dataclass
class ApiParts:
    service: ChatService
    data_layer: Any
    tokens: ApiTokens
    auth: Authenticator
    uploads: PendingUploads
    cursors: CursorCodec  # signs the message-page cursors
    max_message_bytes: int = 1024 * 1024  # the browser's limit on one message, applied here too


# Declares the bearer scheme in the OpenAPI document; the Authenticator does the checking.
bearer = HTTPBearer(auto_error=False, description="a personal API token (`clp_…`)")


def parts(request: Request) -> ApiParts:
    return request.app.state.api


async def caller(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    return await parts(request).auth.caller(request)


async def caller_or_browser(request: Request, _: HTTPAuthorizationCredentials | None = Depends(bearer)) -> Caller:
    """A token, or the browser's login (the token management page)."""
    return await parts(request).auth.caller(request, allow_browser=True)
