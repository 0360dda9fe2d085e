"""A user's own API tokens (`/api/v1/tokens`), and the page that manages them from the
browser (`/api/v1/account/tokens`, linked from the chat's header).

These routes also accept the browser's login cookie. They are safe from other sites: a
cross-site form cannot send a JSON body, and a cross-site `fetch` with the cookie needs a
CORS preflight that only the allowed origins pass.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from datalayers.credentials import ApiToken
from datalayers.timestamps import format_timestamp

from . import models
from .auth import Caller
from .deps import caller_or_browser, parts
from .problems import Problem

router = APIRouter(tags=["tokens"])
STATIC = Path(__file__).parent / "static"
PAGE_HEADERS = {"Cache-Control": "no-store", "Content-Security-Policy":
                "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
                "X-Content-Type-Options": "nosniff"}


def _when(value: datetime | None) -> str | None:
    return format_timestamp(value) if value is not None else None


def info(token: ApiToken) -> models.TokenInfo:
    return models.TokenInfo(id=token.id, name=token.name, created_at=format_timestamp(token.created_at),
                            last_used_at=_when(token.last_used_at), expires_at=_when(token.expires_at))


@router.get("/tokens", response_model=models.TokenList, responses=models.ERRORS, summary="The caller's API tokens")
async def list_tokens(request: Request, who: Caller = Depends(caller_or_browser)):
    tokens = await parts(request).tokens.list(who.identifier)
    return models.TokenList(data=[info(token) for token in tokens])


@router.post("/tokens", status_code=201, response_model=models.NewToken, responses=models.ERRORS,
             summary="Create an API token (its secret is in this answer only)")
async def create_token(body: models.TokenRequest, request: Request, who: Caller = Depends(caller_or_browser)):
    if not body.name.strip():
        raise Problem(422, "a token needs a name")
    expires = timedelta(days=body.expires_in_days) if body.expires_in_days else None
    secret, token = await parts(request).tokens.issue(who.identifier, body.name, expires)
    created = models.NewToken(**info(token).model_dump(), token=secret)
    return JSONResponse(created.model_dump(), status_code=201, headers={"Cache-Control": "no-store"})


@router.delete("/tokens/{token_id}", status_code=204, responses=models.ERRORS, summary="Revoke an API token")
async def revoke_token(token_id: str, request: Request, who: Caller = Depends(caller_or_browser)):
    if len(token_id) > 64 or not await parts(request).tokens.revoke(who.identifier, token_id):
        raise Problem(404, "token not found")
    return Response(status_code=204)


@router.get("/account/tokens", include_in_schema=False)
async def token_page():
    return FileResponse(STATIC / "tokens.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/account/{asset}", include_in_schema=False)
async def token_page_asset(asset: str):
    types = {"tokens.js": "text/javascript", "tokens.css": "text/css"}
    if asset not in types:
        raise Problem(404, "not found")
    return FileResponse(STATIC / asset, media_type=types[asset], headers=PAGE_HEADERS)
