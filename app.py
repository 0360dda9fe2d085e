"""The Chainlit app: `chainlit run app.py`. Thin on purpose: the conversation lives in `chat/`,
persistence in `datalayers/` and `storage/`, configuration in `settings.py`."""

from __future__ import annotations

import asyncio
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
from chat.private_files import private_by_default, sqlite_path, tighten
from chat.providers import build_provider
from chat.service import ChatService
from chat.sessions import RevokedTokenFilter, SessionGuard
from chat.users import ADMIN_PASSWORD_FILE, UserStore
from datalayers import route_guards
from datalayers.actor import request_user
from knowledge.service import KnowledgeService
from settings import load_settings

private_by_default()  # before anything below creates a file: the data folder is 700, its files 600
settings = load_settings()  # also exports a generated CHAINLIT_AUTH_SECRET when unset
storage = settings.build_storage()
storage.mount(fastapi_app)
persistence = settings.build_data_layer(storage=storage)
users = UserStore.from_env(settings.data_dir)
users.ensure_default_admin(settings.data_dir, os.environ.get("APP_ADMIN_PASSWORD", ""))
tighten(settings.data_dir, logger=logger, folders=[getattr(storage, "root", None)],
        files=[sqlite_path(settings.database_url), settings.journal_path, users.users_file,
               settings.data_dir / "auth_secret", settings.data_dir / ADMIN_PASSWORD_FILE])
chat_config = load_chat_config()
# Linked pages, indexed documents and their sources; None without the `knowledge` extra.
knowledge = KnowledgeService.from_settings(settings, chat_config.max_file_chars)
if knowledge is not None and hasattr(persistence, "add_derived_store"):
    persistence.add_derived_store(knowledge)  # deleting a thread, message or file deletes its chunks
service = ChatService(chat_config, build_provider(chat_config), storage, persistence, knowledge)
logger.info("chat provider: %s, model %s; %r", service.provider.label, chat_config.model, settings)


@cl.data_layer
def data_layer():
    # Always registered: otherwise Chainlit would see DATABASE_URL and start its own layer.
    return persistence


background: set[asyncio.Task] = set()


@cl.on_app_startup
async def on_app_startup():
    # Writes a previous run left in the journal (a crash, a shutdown during an outage) are
    # applied now, not when some user next happens to touch the data layer.
    if knowledge is not None:
        # In the background: loading a local embedding model takes seconds, and the app
        # answers meanwhile (a turn that needs the index waits for it; a delete that must
        # reach it is retried from the journal until it is up).
        background.add(asyncio.create_task(knowledge.ensure_started(), name="knowledge start"))
    if hasattr(persistence, "start"):
        await persistence.start()
    if sessions is not None:  # close open sockets whose session another instance or the CLI ended
        background.add(asyncio.create_task(sessions.sweep_forever(), name="session sweep"))
    if settings.retention_days is not None:
        from datetime import timedelta

        from ops.retention import RetentionSchedule

        # The knowledge index forgets a deleted thread's chunks through the data layer (derived store).
        retention = RetentionSchedule(persistence, timedelta(days=settings.retention_days),
                                      settings.retention_interval_hours * 3600)
        background.add(asyncio.create_task(retention.run_forever(), name="retention"))


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
# A client's bad request (malformed id or cursor, another user's rating) is a 4xx, never a 500.
route_guards.install(fastapi_app)


# ---- attachments: element writes by id are checked before Chainlit's routes run them, and
# uploads wait for their message in a folder of this instance's own ------------------------
def install_element_routes() -> None:
    from chat.files import keep_uploads_in
    from datalayers import element_routes

    element_routes.install(fastapi_app)
    keep_uploads_in(settings.data_dir / "uploads")


install_element_routes()


# ---- the web UI: message size limit, the page's assets from the app, avatars ------------
def install_web_ui() -> None:
    from pathlib import Path

    import chainlit.server as chainlit_server
    from chainlit.config import config, public_dir

    from chat.message_limit import MessageSizeGuard
    from chat.webui import mount_avatar_fallback, serve_page_from_app

    upload = config.features.spontaneous_file_upload
    attachment_mb = upload.max_size_mb if upload is not None and upload.enabled else None
    MessageSizeGuard(settings.max_message_bytes, attachment_mb).install(chainlit_server.sio)
    serve_page_from_app(chainlit_server, Path(public_dir))
    mount_avatar_fallback(fastapi_app, config.run.root_path)


install_web_ui()


# ---- login ---------------------------------------------------------------------------
def install_login_security() -> SessionGuard | None:
    """Sessions that end, login throttling, allowed origins, Secure cookies, trusted proxies."""
    from chainlit.auth import get_jwt_secret
    from chainlit.config import config
    from chainlit.server import SOCKET_IO_PATH, sio

    from chat.throttle import LoginThrottle, LoginThrottleMiddleware
    from chat.web_security import SecureCookies, allowed_origins, restrict_origins, trust_proxies

    config.project.user_session_timeout = settings.session_lifetime_seconds  # token `exp` and cookie max-age
    trust_proxies(settings.trusted_proxies, logger)
    origins = allowed_origins(settings.allowed_origins, config.project.allow_origins, logger)
    restrict_origins(fastapi_app, sio, origins, SOCKET_IO_PATH, logger)
    fastapi_app.add_middleware(SecureCookies)
    throttle = LoginThrottle(max_failures=settings.login_max_failures, delay_seconds=settings.login_delay_seconds,
                             lock_seconds=settings.login_lock_seconds)
    fastapi_app.add_middleware(LoginThrottleMiddleware, throttle=throttle, path=f"{config.run.root_path}/login",
                               logger=logger)
    if not hasattr(persistence, "revoke_sessions"):
        logger.warning("the data layer %s stores no session revocations: logout, password changes and removed "
                       "users do not end login tokens before they expire", type(persistence).__name__)
        return None
    # Chainlit's own rule for its cookie's name.
    guard = SessionGuard(persistence, secret=get_jwt_secret, logger=logger,
                         cookie_name=os.environ.get("CHAINLIT_AUTH_COOKIE_NAME", "access_token"))
    guard.watch_sockets(sio.disconnect)
    fastapi_app.add_middleware(RevokedTokenFilter, guard=guard, socket_path=SOCKET_IO_PATH)
    return guard


sessions = install_login_security()


async def before_login(identifier: str) -> None:
    if sessions is not None:
        await sessions.before_login(identifier)


if sessions is not None:

    @cl.on_logout
    async def logout(request, response):
        return await sessions.logout(request, response)


@cl.password_auth_callback
async def password_login(username: str, password: str) -> cl.User | None:
    record = await users.authenticate_async(username, password)
    if record is None:
        return None
    await before_login(record.name)
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
        await before_login(default_user.identifier)
        return default_user


if header_name := os.environ.get("APP_AUTH_HEADER", "").strip():

    @cl.header_auth_callback
    async def header_login(headers) -> cl.User | None:
        # Trust an identity header set by the reverse proxy in front of the app.
        identifier = (headers.get(header_name) or "").strip()
        if not identifier:
            return None
        await before_login(identifier)
        return cl.User(identifier=identifier, metadata={"provider": "header"})


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


# ---- the HTTP API (/api/v1): the same conversations for scripts and OpenAI SDK clients ----
def install_api() -> None:
    from chainlit.config import config

    import api

    async def browser_login(request) -> str | None:
        # The token page is used from the browser: Chainlit's login cookie (already stripped
        # by the session guard when that session was ended).
        token = get_token_from_cookies(request.cookies)
        if not token:
            return None
        try:
            return decode_jwt(token).identifier
        except (jwt.PyJWTError, TypeError):
            return None

    upload = config.features.spontaneous_file_upload
    max_upload_mb = upload.max_size_mb if upload is not None and upload.max_size_mb else 20
    api.mount(fastapi_app, api.build_api(
        service=service, data_layer=persistence, cursor_secret=settings.cursor_secret, data_dir=settings.data_dir,
        rate_per_minute=settings.api_rate_per_minute, max_body_bytes=settings.api_max_body_bytes,
        max_upload_bytes=int(max_upload_mb * 1024 * 1024), max_message_bytes=settings.max_message_bytes,
        browser_login=browser_login))


install_api()


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
    for task in background:
        task.cancel()
    await service.wait_background()  # let pending thread titles be saved
    await service.provider.aclose()
    # Apply what is pending (bounded); anything left stays in the journal for the next start.
    await persistence.close()
    if knowledge is not None:
        await knowledge.close()


@cl.on_shared_thread_view
async def on_shared_thread_view(thread: ThreadDict, viewer: cl.User | None) -> bool:
    # Anyone with the link may read a thread its author chose to share.
    return bool((thread.get("metadata") or {}).get("is_shared"))
