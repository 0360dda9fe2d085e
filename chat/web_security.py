"""The app's web front: which other origins may use the app from a browser (CORS, and the
same rule for the Socket.IO handshake), login cookies marked `Secure` over HTTPS, and which
reverse proxies are believed about the client's address and scheme.

* Origins. Chainlit 2.12 adds Starlette's CORSMiddleware with `allow_credentials=True`
  and `.chainlit/config.toml`'s `allow_origins` (its default `["*"]` makes Starlette echo any
  Origin, with credentials). Here its entry is replaced, before the app serves, by one that
  allows only the listed origins (`APP_ALLOWED_ORIGINS`, plus config.toml's list without
  '*') and never answers another origin with `Access-Control-Allow-Credentials`. The app's
  own pages need no CORS at all. Socket.IO (whose own CORS Chainlit turns off) gets the
  same rule: a handshake from a page of another origin is refused, so a foreign page cannot
  open a socket with the user's cookie.
* Cookies. Chainlit marks its cookies `Secure` only with `CHAINLIT_COOKIE_SAMESITE=none`;
  here every cookie of a response to an HTTPS request is. Served directly over TLS
  (`chainlit run --ssl-certfile ...`) the request is HTTPS; behind a proxy it is when a
  trusted proxy says so (`X-Forwarded-Proto: https`).
* Proxies. uvicorn (which `chainlit run` starts after importing the app) believes
  `X-Forwarded-For` / `X-Forwarded-Proto` from the peers in `FORWARDED_ALLOW_IPS`, by
  default the loopback addresses. The app sets it from `APP_TRUSTED_PROXIES` (default: no
  proxy), so a client cannot pick its own address for the login throttle, nor its scheme.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from urllib.parse import urlsplit

from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response

CREDENTIALS_HEADER = "access-control-allow-credentials"


class CredentialedOriginsCORS(CORSMiddleware):
    """Starlette's CORS, except that only an allowed origin is ever told that credentials
    are allowed (Starlette adds the header to every response to a request with an Origin)."""

    async def send(self, message, send, request_headers: Headers) -> None:
        origin = request_headers.get("origin")
        if message["type"] != "http.response.start" or origin is None or self.is_allowed_origin(origin):
            await super().send(message, send, request_headers)
            return

        async def without_credentials(start) -> None:
            headers = MutableHeaders(scope=start)
            if CREDENTIALS_HEADER in headers:
                del headers[CREDENTIALS_HEADER]
            await send(start)

        await super().send(message, without_credentials, request_headers)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if not self.is_allowed_origin(request_headers["origin"]) and CREDENTIALS_HEADER in response.headers:
            del response.headers[CREDENTIALS_HEADER]
        return response


def allowed_origins(configured: Iterable[str], from_config_toml: Iterable[str], logger: logging.Logger) -> list[str]:
    """The setting's origins plus config.toml's, without '*' (which would let any site
    use the app with the user's cookie)."""
    toml = [str(o).strip().rstrip("/") for o in from_config_toml]
    if "*" in toml:
        logger.warning("ignoring allow_origins = [\"*\"] in .chainlit/config.toml: any site could act as the "
                       "logged-in user; list the other origins allowed in APP_ALLOWED_ORIGINS")
    origins = [*configured, *(o for o in toml if o and o != "*")]
    return list(dict.fromkeys(origins))


def restrict_origins(app, sio, origins: list[str], socket_path: str, logger: logging.Logger) -> None:
    """Put the origin rule in place of Chainlit's CORS middleware and on Socket.IO.
    Raises when Chainlit's CORS middleware is not where Chainlit 2.12 puts it, or the app
    already built its middleware stack (too late to change it)."""
    if getattr(app, "middleware_stack", None) is not None:
        raise RuntimeError("the app already serves: its CORS middleware can no longer be replaced")
    found = [i for i, m in enumerate(app.user_middleware) if m.cls is CORSMiddleware]
    if len(found) != 1:
        raise RuntimeError(f"expected Chainlit's one CORSMiddleware, found {len(found)}: the origin rule "
                           "cannot be installed on this Chainlit version")
    app.user_middleware[found[0]] = Middleware(
        CredentialedOriginsCORS, allow_origins=origins, allow_credentials=True, allow_methods=["*"],
        allow_headers=["*"])
    # Socket.IO's own origin check stays off, as Chainlit sets it: the CORS middleware above
    # answers its polling requests (its own headers would come twice), and this one refuses
    # foreign pages' handshakes, websocket ones included (CORS does not cover those).
    if sio.eio.cors_allowed_origins != []:
        raise RuntimeError("Chainlit no longer turns Socket.IO's CORS off: the origin rule needs review")
    app.add_middleware(SocketOriginCheck, path=socket_path, origins=origins, logger=logger)


def socket_origin_allowed(origins: tuple[str, ...], origin: str | None, environ: dict) -> bool:
    """A handshake is accepted from the app's own pages (the Origin's host is the host the
    request was sent to, directly or as a proxy forwarded it) and from the listed origins.
    Browsers always send Origin on a handshake; other clients may omit it."""
    if not origin:
        return True
    if origin.rstrip("/") in origins:
        return True
    host = urlsplit(origin).netloc.lower()
    own = {environ.get("HTTP_HOST", ""), environ.get("HTTP_X_FORWARDED_HOST", "").split(",")[0].strip()}
    return bool(host) and host in {h.lower() for h in own if h}


class SocketOriginCheck:
    """ASGI middleware: refuses a Socket.IO request (polling or websocket handshake) sent by
    a page of another origin, before Socket.IO sees it. (Socket.IO would refuse it too, but
    logs each new origin as an ERROR; a refused foreign page is the rule working.)"""

    def __init__(self, app, *, path: str, origins: list[str], logger: logging.Logger):
        self.app = app
        self.path = path.rstrip("/")
        self.origins = tuple(origins)
        self.logger = logger
        self._reported: set[str] = set()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] in ("http", "websocket") and (scope["path"] + "/").startswith(self.path + "/"):
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            environ = {"HTTP_HOST": headers.get("host", ""), "HTTP_X_FORWARDED_HOST": headers.get("x-forwarded-host", "")}
            if not socket_origin_allowed(self.origins, origin, environ):
                self._report(str(origin))
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})  # before accept: HTTP 403
                else:
                    await Response("This origin may not connect to the app.", status_code=403,
                                   media_type="text/plain")(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _report(self, origin: str) -> None:
        level = logging.DEBUG if origin in self._reported else logging.WARNING
        if len(self._reported) < 1000:
            self._reported.add(origin)
        self.logger.log(level, "refused a socket connection from a page of %r: neither this app's origin nor one of "
                        "APP_ALLOWED_ORIGINS", origin[:200])


class SecureCookies:
    """ASGI middleware: on a response to an HTTPS request, every cookie set is `Secure`."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope.get("scheme") != "https":
            await self.app(scope, receive, send)
            return

        async def secure_send(message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [
                    (k, v + b"; Secure") if k.lower() == b"set-cookie" and b"secure" not in _attributes(v) else (k, v)
                    for k, v in message.get("headers", [])
                ]
            await send(message)

        await self.app(scope, receive, secure_send)


def _attributes(set_cookie: bytes) -> set[bytes]:
    return {part.split(b"=", 1)[0].strip().lower() for part in set_cookie.split(b";")[1:]}


def trust_proxies(proxies: Iterable[str], logger: logging.Logger) -> None:
    """Tell uvicorn which peers' X-Forwarded-* headers to believe (none unless listed).
    Must run before uvicorn builds its config: `chainlit run` imports the app first."""
    proxies = list(proxies)
    os.environ["FORWARDED_ALLOW_IPS"] = ",".join(proxies)
    if proxies:
        logger.info("believing X-Forwarded-For / X-Forwarded-Proto from %s", ", ".join(proxies))
