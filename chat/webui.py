"""Two fixes to what Chainlit's web UI loads, made from the app (nothing inside Chainlit changes).

* The page loads from the app alone. Chainlit 2.12's `index.html` asks Google Fonts for the
  Inter font and jsDelivr for KaTeX's stylesheet; an offline or locked-down deployment refuses
  both, and the page then shows a fallback font and console errors. Copies of both ship in
  `public/vendor/` (its README says where they come from), and the page's HTML is rewritten to
  point at them. Chainlit builds that HTML in `chainlit.server.get_html_template`, which its
  catch-all route looks up on every request, so wrapping that function is enough.
* Every author gets an avatar. Chainlit's `/avatars/{name}` answers 400 to a name with any
  character outside `[a-zA-Z0-9_ .-]` (an app name or author with parentheses, an accent...),
  and the browser shows a blank avatar. A route in front of it gives such names the default
  avatar; other names go to Chainlit's route unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chainlit.logger import logger as chainlit_logger

logger = chainlit_logger.getChild("WebUI")

#: What each remote asset of Chainlit's page becomes: a file under `public/`, or None to drop
#: the tag (the preconnect hints to the font hosts, which nothing needs any more).
LOCAL_COPIES: tuple[tuple[str, str | None], ...] = (
    ("https://fonts.googleapis.com/css2?family=Inter:", "vendor/inter/inter.css"),
    ("https://fonts.googleapis.com", None),
    ("https://fonts.gstatic.com", None),
    ("https://cdn.jsdelivr.net/npm/katex@", "vendor/katex/katex.min.css"),
)
LINK_TAG = re.compile(r"<link\b[^>]*>", re.IGNORECASE)
ASSET_URL = re.compile(r"""<(?:link|script)\b[^>]*?\b(?:href|src)\s*=\s*["']((?:https?:)?//[^"']+)["']""", re.IGNORECASE)
HREF = re.compile(r"""\bhref\s*=\s*["']([^"']*)["']""", re.IGNORECASE)
#: The names Chainlit's avatar route accepts.
AVATAR_NAME = re.compile(r"^[a-zA-Z0-9_ .-]+$")


def self_hosted(html: str, root_path: str) -> str:
    """`html` with Chainlit's remote stylesheets pointing at the copies under `/public`."""
    root = root_path.rstrip("/")

    def local(match: re.Match[str]) -> str:
        tag = match.group(0)
        href = HREF.search(tag)
        if href is None:
            return tag
        for prefix, copy in LOCAL_COPIES:
            if href.group(1).startswith(prefix):
                return "" if copy is None else f'<link rel="stylesheet" href="{root}/public/{copy}" />'
        return tag

    return LINK_TAG.sub(local, html)


def remote_assets(html: str) -> list[str]:
    """The stylesheets and scripts the page still loads from another host."""
    return ASSET_URL.findall(html)


def serve_page_from_app(server: Any, public_dir: Path) -> None:
    """Wrap `server.get_html_template` (the `chainlit.server` module) with `self_hosted`."""
    original: Callable[[str], str] = server.get_html_template
    if getattr(original, "self_hosted", False):
        return
    missing = [copy for _, copy in LOCAL_COPIES if copy and not (public_dir / copy).is_file()]
    if missing:
        # Rewriting would turn a slow remote font into a broken local link.
        logger.warning("the page keeps loading its fonts and KaTeX from other hosts: %s missing under %s", missing, public_dir)
        return

    def get_html_template(root_path: str) -> str:
        return self_hosted(original(root_path), root_path)

    get_html_template.self_hosted = True  # type: ignore[attr-defined]
    server.get_html_template = get_html_template
    if leftovers := remote_assets(get_html_template("")):
        # An operator's own custom_css/custom_js URL, or something a newer Chainlit added.
        logger.warning("the page still loads assets from other hosts: %s", ", ".join(leftovers))


def mount_avatar_fallback(app: Any, root_path: str = "") -> None:
    """Serve the default avatar for author names Chainlit's avatar route refuses."""
    from chainlit.server import get_avatar
    from starlette.requests import Request
    from starlette.routing import Route

    async def avatar(request: Request) -> Any:
        name = request.path_params["name"]
        return await get_avatar(name if AVATAR_NAME.match(name) else "default")

    # At the front: a route added later would never be reached behind Chainlit's.
    app.router.routes.insert(0, Route(f"{root_path.rstrip('/')}/avatars/{{name:str}}", avatar, methods=["GET"], name="avatar"))
