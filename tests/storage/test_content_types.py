"""The blob type policy (storage/content_types.py): exact parsing of a declared type, the
inline allow-list, and the disposition every client serves with."""

from __future__ import annotations

import pytest

from storage.content_types import (
    BLOB_RESPONSE_HEADERS,
    OCTET_STREAM,
    delivery,
    is_inline_safe,
    normalize_media_type,
    parse_media_type,
)


@pytest.mark.parametrize(
    "declared, stored",
    [
        ("image/png", "image/png"),
        ("IMAGE/PNG", "image/png"),
        ("  image/jpeg  ", "image/jpeg"),
        ("text/plain; charset=UTF-8", "text/plain; charset=utf-8"),
        ("text/plain;charset=utf-8;format=flowed", "text/plain; charset=utf-8"),
        ("text/plain;", "text/plain"),
        ('text/plain; charset="utf-8"', "text/plain"),  # quoted: well formed, charset not kept
        ("application/pdf; name=x.pdf", "application/pdf"),  # parameters of other types dropped
        ("image/png; charset=utf-8", "image/png"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",
         "application/vnd.openxmlformats-officedocument.wordprocessingml.document"),
        # What passed Chainlit's `image/*` rule and was served as HTML:
        ("image/png,text/html", OCTET_STREAM),
        ("image/png, text/html", OCTET_STREAM),
        ("image/png;,text/html", OCTET_STREAM),
        ("image/png text/html", OCTET_STREAM),
        ("image/png\r\nX-Injected: 1", OCTET_STREAM),
        ("image/png; charset", OCTET_STREAM),
        ('text/plain; charset="unterminated', OCTET_STREAM),
        ("image/pngé", OCTET_STREAM),
        ("image", OCTET_STREAM),
        ("image/", OCTET_STREAM),
        ("/png", OCTET_STREAM),
        ("image/*", OCTET_STREAM),
        ("*/*", OCTET_STREAM),
        ("", OCTET_STREAM),
        (None, OCTET_STREAM),
        (f"image/{'x' * 128}", OCTET_STREAM),
    ],
)
def test_declared_types_are_normalised_exactly(declared, stored):
    assert normalize_media_type(declared) == stored


def test_a_long_charset_is_not_kept():
    assert normalize_media_type(f"text/plain; charset={'x' * 65}") == "text/plain"
    assert parse_media_type("text/plain; charset=latin1").charset == "latin1"


@pytest.mark.parametrize(
    "media_type",
    ["image/png", "image/jpeg", "image/gif", "image/webp", "image/avif", "image/bmp", "image/x-icon",
     "application/pdf", "text/plain", "text/plain; charset=utf-8", "audio/mpeg", "audio/ogg", "video/mp4",
     "video/webm"],
)
def test_inline_allow_list(media_type):
    assert is_inline_safe(media_type)


@pytest.mark.parametrize(
    "media_type",
    ["text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml", "text/javascript",
     "application/javascript", "text/css", "text/csv", "text/markdown", "application/json", "image/tiff",
     "multipart/x-mixed-replace", "application/x-shockwave-flash", "image/png,text/html", OCTET_STREAM,
     "", None],
)
def test_everything_else_is_an_attachment(media_type):
    assert not is_inline_safe(media_type)
    served = delivery(media_type, "file.bin")
    assert served.content_disposition.startswith("attachment;") and not served.inline


def test_delivery_types_and_names():
    served = delivery("image/png,text/html", "x.png")
    assert served.content_type == OCTET_STREAM
    assert served.content_disposition == "attachment; filename=\"x.png\"; filename*=UTF-8''x.png"
    photo = delivery("IMAGE/PNG", "été.png")
    assert photo.content_type == "image/png" and photo.inline
    assert photo.content_disposition == "inline; filename=\"_t_.png\"; filename*=UTF-8''%C3%A9t%C3%A9.png"


def test_a_disposition_given_at_upload_only_makes_a_file_an_attachment():
    assert delivery("text/plain", "a.txt", 'attachment; filename="a.txt"').content_disposition == \
        'attachment; filename="a.txt"'
    assert delivery("text/html", "a.html", 'inline; filename="a.html"').content_disposition.startswith("attachment;")
    assert delivery("text/plain", "a.txt", 'inline; filename="b.txt"').content_disposition.startswith(
        'inline; filename="a.txt"')
    # A disposition that could split the header is replaced by one made here.
    assert delivery("text/plain", "a.txt", "attachment; filename=\"a\r\nX: y\"").content_disposition == \
        "attachment; filename=\"a.txt\"; filename*=UTF-8''a.txt"


def test_response_headers_sandbox_everything():
    assert BLOB_RESPONSE_HEADERS == {
        "Content-Security-Policy": "sandbox; default-src 'none'",
        "X-Content-Type-Options": "nosniff",
    }
