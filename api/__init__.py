"""The conversation API: the same conversations as the browser, over HTTP, under `/api/v1`
on the app's own server.

* REST resources (`conversations.py`): conversations, messages, files, ratings;
* the chat call of seed 004 (`chat.py`), streamed as server-sent events or answered as JSON;
* an OpenAI-compatible endpoint (`openai_compat.py`);
* personal API tokens (`tokens.py`; stored as hashes by the data layer, see `chat.api_tokens`);
* OpenAPI at `/api/v1/openapi.json`, an interactive page at `/api/v1/docs` (assets served
  from the app, no CDN).

It is a FastAPI application of its own, mounted in front of Chainlit's routes, so it has its
own error handlers (RFC 9457 problem documents) and OpenAPI document; it shares the app's
data layer, storage, chat service and middlewares (CORS, revoked sessions).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from starlette.requests import Request

PREFIX = "/api/v1"


def build_api(*, service: Any, data_layer: Any, cursor_secret: bytes, data_dir: Path, rate_per_minute: int,
              max_body_bytes: int, max_upload_bytes: int, max_message_bytes: int, browser_login=None):
    """The API application (not yet mounted)."""
    import swagger_ui_bundle
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    from chat.api_tokens import ApiTokens
    from datalayers.paging import CursorCodec

    from . import chat, conversations, openai_compat, tokens
    from .auth import Authenticator, RateLimiter
    from .deps import ApiParts, logger
    from .problems import BodyLimit, install_handlers
    from .uploads import PendingUploads

    api = FastAPI(title="Chainlit Persist API", version="1", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json",
                  description="The app's conversations over HTTP. Authorise with `Authorization: Bearer <API token>`.")
    token_service = ApiTokens(data_layer)
    api.state.api = ApiParts(
        service=service, data_layer=data_layer, tokens=token_service,
        auth=Authenticator(data_layer, token_service, RateLimiter(rate_per_minute), browser_login),
        uploads=PendingUploads(data_dir / "api_uploads", max_bytes=max_upload_bytes),
        cursors=CursorCodec(cursor_secret), max_message_bytes=max_message_bytes)
    for module in (conversations, chat, openai_compat, tokens):
        api.include_router(module.router)
    install_handlers(api, logger)
    document_problems(api)
    api.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes + 64 * 1024)

    api.mount("/docs-assets", StaticFiles(directory=swagger_ui_bundle.swagger_ui_path), name="docs-assets")

    @api.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        root = request.scope.get("root_path", "").rstrip("/")
        assets = f"{root}/docs-assets"
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="Chainlit Persist API",
                                   swagger_js_url=f"{assets}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{assets}/swagger-ui.css",
                                   swagger_favicon_url=f"{assets}/favicon-32x32.png")

    return api


def document_problems(api: Any) -> None:
    """Every route can answer 400, 401, 413, 422, 429 and 503 (as problem documents): say so
    in the OpenAPI document, under the media type they are sent with."""
    from .problems import PROBLEM_TYPE

    build = api.openapi

    def openapi() -> dict:
        if api.openapi_schema:
            return api.openapi_schema
        document = build()
        problem = {"schema": {"$ref": "#/components/schemas/Problem"}}
        for path in document.get("paths", {}).values():
            for operation in path.values():
                responses = operation.setdefault("responses", {})
                for status in ("400", "401", "413", "422", "429", "503"):
                    responses.setdefault(status, {"description": "a problem document (RFC 9457)"})
                for status, response in responses.items():
                    if status[0] in "45":
                        response["content"] = {PROBLEM_TYPE: problem}
        api.openapi_schema = document
        return document

    api.openapi = openapi


def mount(app: Any, api: Any) -> None:
    """Put the API in front of Chainlit's routes (its single-page app catches every GET)."""
    import re

    from starlette.routing import Mount

    route = Mount(PREFIX, app=api, name="api")
    # Starlette's pattern is `.*`, which stops at a newline: a path with an encoded one
    # (`%0A`) would fall through to Chainlit's routes instead of the API's 404.
    route.path_regex = re.compile(route.path_regex.pattern, re.DOTALL)
    app.router.routes.insert(0, route)
