"""The Chainlit app: `chainlit run app.py`. Thin on purpose: the conversation lives in `chat/`,
persistence in `datalayers/` and `storage/`, configuration in `settings.py`."""

from __future__ import annotations

import os
from typing import Any

import chainlit as cl
import jwt
from chainlit.auth import decode_jwt, get_token_from_cookies
from chainlit.logger import logger
from chainlit.oauth_providers import get_configured_oauth_providers
from chainlit.server import app as fastapi_app
from chainlit.types import ThreadDict
from fastapi.security.utils import get_authorization_scheme_param

from chat import load_chat_config
from chat.providers import build_provider
from chat.service import ChatService
from chat.users import UserStore
from datalayers.actor import request_user
from settings import load_settings

settings = load_settings()  # also exports a generated CHAINLIT_AUTH_SECRET when unset
storage = settings.build_storage()
storage.mount(fastapi_app)
persistence = settings.build_data_layer(storage=storage)
users = UserStore.from_env(settings.data_dir)
users.ensure_default_admin(settings.data_dir, os.environ.get("APP_ADMIN_PASSWORD", ""))
chat_config = load_chat_config()
service = ChatService(chat_config, build_provider(chat_config), storage, persistence)
logger.info("chat provider: %s, model %s; %r", service.provider.label, chat_config.model, settings)


@cl.data_layer
def data_layer():
    # Always registered: otherwise Chainlit would see DATABASE_URL and start its own layer.
    return persistence


@cl.on_app_startup
async def on_app_startup():
    # Writes a previous run left in the journal (a crash, a shutdown during an outage) are
    # applied now, not when some user next happens to touch the data layer.
    if hasattr(persistence, "start"):
        await persistence.start()


async def health(request):
    """Liveness plus the write backlog: `degraded` while database writes are failing (they
    are kept in the journal and retried), with how many are pending and for how long."""
    from starlette.responses import JSONResponse

    journal = persistence.status() if hasattr(persistence, "status") else {}
    state = "degraded" if journal.get("degraded") else "ok"
    return JSONResponse({"status": state, "journal": journal}, headers={"Cache-Control": "no-store"})


def mount_health(app) -> None:
    from starlette.routing import Route

    # At the front: Chainlit's single-page app has a catch-all GET route.
    app.router.routes.insert(0, Route("/health", health, methods=["GET"], name="health"))


mount_health(fastapi_app)


# ---- login ---------------------------------------------------------------------------
@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    record = await users.authenticate_async(username, password)
    if record is None:
        return None
    return cl.User(
        identifier=record.name,
        display_name=record.display_name,
        metadata={"role": record.role, "provider": "credentials"},
    )


if get_configured_oauth_providers():  # Chainlit's OAUTH_<PROVIDER>_* variables are set

    @cl.oauth_callback
    async def oauth_login(
        provider_id: str,
        token: str,
        raw_user_data: dict[str, str],
        default_user: cl.User,
        id_token: str | None = None,
    ) -> cl.User | None:
        return default_user


if header_name := os.environ.get("APP_AUTH_HEADER", "").strip():

    @cl.header_auth_callback
    async def header_login(headers) -> cl.User | None:
        # Trust an identity header set by the reverse proxy in front of the app.
        identifier = (headers.get(header_name) or "").strip()
        return cl.User(identifier=identifier, metadata={"provider": "header"}) if identifier else None


@fastapi_app.middleware("http")
async def feedback_owner(request, call_next):
    """Tell the data layer who rates: Chainlit's /feedback routes set no Chainlit context."""
    if request.url.path.rstrip("/").endswith("/feedback") and request.method in ("PUT", "DELETE"):
        token = get_token_from_cookies(request.cookies)
        if not token:
            scheme, token = get_authorization_scheme_param(request.headers.get("Authorization"))
            token = token if scheme.lower() == "bearer" else None
        identifier = None
        if token:
            try:
                identifier = decode_jwt(token).identifier
            except (jwt.PyJWTError, TypeError) as exc:  # Chainlit's route answers 401 itself
                logger.debug("feedback request with an invalid token: %s", exc)
        reset = request_user.set(identifier)
        try:
            return await call_next(request)
        finally:
            request_user.reset(reset)
    return await call_next(request)


# ---- the conversation ------------------------------------------------------------------
@cl.on_chat_start
async def on_chat_start():
    await service.start()


@cl.on_chat_resume
async def on_chat_resume(thread: ThreadDict):
    await service.resume(thread)


@cl.on_settings_update
async def on_settings_update(values: dict[str, Any]):
    await service.settings_updated(values)


@cl.on_message
async def on_message(message: cl.Message):
    await service.on_message(message)


@cl.on_app_shutdown
async def on_app_shutdown():
    await service.wait_background()  # let pending thread titles be saved
    await service.provider.aclose()
    # Apply what is pending (bounded); anything left stays in the journal for the next start.
    await persistence.close()


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: ThreadDict, viewer: cl.User | None) -> bool:
    # Anyone with the link may read a thread its author chose to share.
    return bool((thread.get("metadata") or {}).get("is_shared"))
