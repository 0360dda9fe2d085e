"""The newcomer's first run, checked without a browser: the page's assets come from the app,
the vendored copies are complete, the login and New Chat texts, the readme, and the message
size setting and its wording. `tests/e2e/test_browser.py` checks the same in Chromium and
`tests/security/test_message_size.py` the size limit through the real app."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import chainlit
import pytest

from chat.message_limit import (
    ESCAPED_CHARS_PER_BYTE,
    LARGEST_FRAME_BYTES,
    human_size,
    message_bytes,
    oversize,
    refusal_text,
    socket_buffer_bytes,
)
from chat.webui import LOCAL_COPIES, remote_assets, self_hosted
from settings import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES_RANGE, ConfigurationError, load_settings

ROOT = Path(__file__).resolve().parents[2]
PUBLIC = ROOT / "public"
CHAINLIT = Path(chainlit.__file__).parent
CHAINLIT_INDEX = (CHAINLIT / "frontend" / "dist" / "index.html").read_text()


# ---- the page's assets --------------------------------------------------------------------
def test_chainlit_page_loads_remote_assets_until_rewritten():
    # If a Chainlit upgrade drops these, the rewrite and this test can go.
    assert "https://fonts.googleapis.com/css2?family=Inter" in CHAINLIT_INDEX
    assert "https://cdn.jsdelivr.net/npm/katex@" in CHAINLIT_INDEX
    assert remote_assets(CHAINLIT_INDEX)


@pytest.mark.parametrize("root_path", ["", "/chat"])
def test_rewritten_page_loads_nothing_from_another_host(root_path):
    html = self_hosted(CHAINLIT_INDEX, root_path)
    assert remote_assets(html) == []
    assert "fonts.gstatic.com" not in html and "fonts.googleapis.com" not in html and "jsdelivr" not in html
    links = re.findall(r'<link rel="stylesheet" href="([^"]+)" />', html)
    assert f"{root_path}/public/vendor/inter/inter.css" in links
    assert f"{root_path}/public/vendor/katex/katex.min.css" in links
    # Chainlit's own script and stylesheet are untouched.
    assert re.search(r'<script type="module" crossorigin src="/assets/index-[^"]+\.js"></script>', html)


def test_every_local_copy_and_every_file_its_stylesheet_names_is_shipped():
    for _, copy in LOCAL_COPIES:
        if copy is None:
            continue
        stylesheet = PUBLIC / copy
        assert stylesheet.is_file(), stylesheet
        urls = re.findall(r"url\(([^)]+)\)", stylesheet.read_text())
        assert urls, f"{copy} names no font"
        for url in urls:
            assert not re.match(r"[a-z]+:|//", url), f"{copy} still loads {url} from elsewhere"
            target = (stylesheet.parent / url.strip("'\"")).resolve()
            assert target.is_file() and target.suffix == ".woff2", f"{copy} names {url}, which is not shipped"
    assert (PUBLIC / "vendor" / "inter" / "LICENSE").is_file() and (PUBLIC / "vendor" / "katex" / "LICENSE").is_file()


def test_inter_covers_the_weights_chainlit_asked_google_for():
    asked = re.search(r"family=Inter:wght@([0-9;]+)", CHAINLIT_INDEX)
    assert asked, "Chainlit's page no longer names the Inter weights"
    css = (PUBLIC / "vendor" / "inter" / "inter.css").read_text()
    shipped = set(re.findall(r"font-weight: (\d+);", css))
    assert set(asked.group(1).split(";")) <= shipped


# ---- texts a newcomer reads ---------------------------------------------------------------
def test_login_and_new_chat_texts_and_the_language_everyone_gets():
    ours = json.loads((ROOT / ".chainlit" / "translations" / "en-US.json").read_text())
    stock = json.loads((CHAINLIT / "translations" / "en-US.json").read_text())

    def keys(tree, prefix=""):
        for key, value in tree.items():
            yield from keys(value, f"{prefix}{key}.") if isinstance(value, dict) else [prefix + key]

    # Chainlit does not merge a translation file with its own: ours must have every key.
    assert set(keys(ours)) == set(keys(stock))
    login = ours["auth"]["login"]["form"]["email"]
    assert login["label"] == "User name" and "@" not in login["placeholder"] and "email" not in login["required"]
    dialog = ours["navigation"]["newChat"]["dialog"]
    assert "clear" not in dialog["description"].lower() and "saved" in dialog["description"]
    # Other languages would show Chainlit's stock texts ("E-Mail-Adresse"...): everyone gets ours.
    config = tomllib.loads((ROOT / ".chainlit" / "config.toml").read_text())
    assert config["UI"]["language"] == "en-US"


def test_readme_names_the_gear_not_sliders():
    readme = (ROOT / "chainlit.md").read_text()
    assert "gear" in readme and "slider" not in readme.lower()


# ---- the message size limit ---------------------------------------------------------------
def test_message_size_setting(tmp_path):
    base = {"APP_DATA_DIR": str(tmp_path)}
    assert load_settings(base).max_message_bytes == DEFAULT_MAX_MESSAGE_BYTES == 1024 * 1024
    assert load_settings({**base, "APP_MAX_MESSAGE_BYTES": "200000"}).max_message_bytes == 200_000
    assert load_settings({**base, "APP_MAX_MESSAGE_BYTES": "2_097_152"}).max_message_bytes == 2 * 1024 * 1024
    for bad in ("lots", "1.5", "1000", "2097153", "-1"):
        with pytest.raises(ConfigurationError, match="APP_MAX_MESSAGE_BYTES"):
            load_settings({**base, "APP_MAX_MESSAGE_BYTES": bad})


def test_every_allowed_limit_fits_the_socket():
    low, high = MAX_MESSAGE_BYTES_RANGE
    for limit in (low, DEFAULT_MAX_MESSAGE_BYTES, high):
        buffer = socket_buffer_bytes(limit)
        assert limit * ESCAPED_CHARS_PER_BYTE < buffer <= LARGEST_FRAME_BYTES
    with pytest.raises(ValueError):
        socket_buffer_bytes(3 * 1024 * 1024)


def test_size_is_counted_in_utf8_bytes():
    assert message_bytes("abc") == 3
    assert message_bytes("é") == 2 and message_bytes("😀") == 4
    assert message_bytes("\ud800") == 3  # a lone surrogate, as a browser can send one
    limit = 10
    assert oversize({"message": {"output": "é" * 5}}, limit) is None  # 10 bytes: at the limit
    assert oversize({"message": {"output": "é" * 5 + "x"}}, limit) == 11
    for malformed in (None, "text", {"message": None}, {"message": {"output": 12}}, {"message": {}}):
        assert oversize(malformed, limit) is None


def test_refusal_tells_the_size_and_the_limit():
    assert human_size(512) == "512 bytes"
    assert human_size(1536) == "1.5 KB (1,536 bytes)"
    assert human_size(1024 * 1024 + 1) == "1.0 MB (1,048,577 bytes)"
    text = refusal_text(1_300_000, 1024 * 1024, edited=False, attachment_mb=20)
    assert "not sent" in text and "1,300,000 bytes" in text and "1,048,576 bytes" in text
    assert "attach the text as a file instead (up to 20 MB" in text
    edited = refusal_text(2000, 1024, edited=True, attachment_mb=None)
    assert "edit was not saved" in edited and "attach" not in edited
