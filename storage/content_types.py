"""How a stored blob is typed and served: one policy for every storage client.

An upload's Content-Type is whatever the client declared. Browsers and Chainlit's accept
rule read it loosely (`image/png,text/html` matches `image/*`), while a browser given that
same string as a response type may render the body as HTML on the app's own origin. So:

* at upload the declared type is parsed exactly (one `type/subtype`, optional
  `; name=value` parameters, nothing else); anything that does not parse cleanly is
  stored as `application/octet-stream`;
* a response is inline only for an allow-list of types a browser displays without running
  anything (raster images — not SVG —, PDF, plain text, audio, video); every other type is
  an attachment (a download);
* every response the app itself serves also carries `BLOB_RESPONSE_HEADERS`: a CSP sandbox
  with nothing allowed (no script, no plugin, an opaque origin) and `nosniff`, so even a
  mislabelled body cannot become a page of the app.
"""

from __future__ import annotations

import mimetypes
import re
from dataclasses import dataclass
from urllib.parse import quote

OCTET_STREAM = "application/octet-stream"

#: Sent with every blob response the app serves (the local store's download route).
BLOB_RESPONSE_HEADERS = {
    "Content-Security-Policy": "sandbox; default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}

# Raster formats browsers decode as pictures; SVG is a document that can hold script.
INLINE_IMAGE_TYPES = frozenset(
    {
        "image/png",
        "image/apng",
        "image/jpeg",
        "image/gif",
        "image/webp",
        "image/avif",
        "image/bmp",
        "image/x-icon",
        "image/vnd.microsoft.icon",
    }
)
INLINE_TYPES = INLINE_IMAGE_TYPES | {"application/pdf", "text/plain"}
# Media elements play these; a browser has no way to execute them.
INLINE_TOP_LEVEL_TYPES = ("audio", "video")

# RFC 9110: token, quoted-string (ASCII only: a type with other characters is not clean).
_TOKEN = r"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
_QUOTED = r'"(?:[\t !#-\[\]-~]|\\[\t -~])*"'
_PARAMETER = rf"[ \t]*;[ \t]*(?:({_TOKEN})=({_TOKEN}|{_QUOTED}))?"
_MEDIA_TYPE = re.compile(rf"({_TOKEN})/({_TOKEN})((?:{_PARAMETER})*)[ \t]*")
_PARAMETERS = re.compile(_PARAMETER)
# RFC 6838 §4.2: type and subtype names are at most 127 characters.
_MAX_NAME = 127
# A charset name longer than this is not one (the longest IANA name has 45 characters).
_MAX_CHARSET = 64


@dataclass(frozen=True)
class MediaType:
    type: str
    subtype: str
    charset: str | None = None

    @property
    def essence(self) -> str:
        """`type/subtype`, lower case, without parameters."""
        return f"{self.type}/{self.subtype}"

    def __str__(self) -> str:
        return f"{self.essence}; charset={self.charset}" if self.charset else self.essence


def parse_media_type(value: str | None) -> MediaType | None:
    """The media type `value` names, or None unless it is exactly one well-formed type.

    Only a `charset` of a `text/*` type is kept from the parameters: no other parameter
    changes how a browser treats the types served here."""
    if not value or not value.isascii():
        return None
    match = _MEDIA_TYPE.fullmatch(value.strip())
    if match is None:
        return None
    main, sub, parameters = match.group(1).lower(), match.group(2).lower(), match.group(3)
    if "*" in (main, sub) or len(main) > _MAX_NAME or len(sub) > _MAX_NAME:
        return None  # a wildcard is a pattern, not the type of a file
    charset = None
    if main == "text":
        for name, raw in _PARAMETERS.findall(parameters):
            if name.lower() == "charset" and raw and not raw.startswith('"'):
                charset = raw.lower() if len(raw) <= _MAX_CHARSET else None
    return MediaType(main, sub, charset)


def normalize_media_type(value: str | None) -> str:
    """The declared type as stored: its clean form, else `application/octet-stream`."""
    parsed = parse_media_type(value)
    return str(parsed) if parsed is not None else OCTET_STREAM


def is_inline_safe(value: str | None) -> bool:
    """True when a browser may show a body of this type inline on the app's origin."""
    parsed = parse_media_type(value)
    if parsed is None:
        return False
    return parsed.essence in INLINE_TYPES or parsed.type in INLINE_TOP_LEVEL_TYPES


def guess_media_type(filename: str) -> str:
    """The type a file name suggests, for objects stored without one."""
    return mimetypes.guess_type(filename, strict=False)[0] or OCTET_STREAM


def content_disposition(disposition: str, filename: str) -> str:
    """`inline; filename="ascii"; filename*=UTF-8''utf8` (RFC 6266 / RFC 5987)."""
    ascii_name = "".join(ch if 32 <= ord(ch) < 127 and ch not in '"\\' else "_" for ch in filename)
    return f"{disposition}; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(filename, safe='')}"


@dataclass(frozen=True)
class Delivery:
    """The response headers a blob is served with."""

    content_type: str
    content_disposition: str

    @property
    def inline(self) -> bool:
        return self.content_disposition.startswith("inline")


def delivery(declared: str | None, filename: str, stored_disposition: str | None = None) -> Delivery:
    """Type and disposition to serve a blob with, from the type it was stored with.

    A type that does not parse is served as `application/octet-stream`; only allow-listed
    types are inline. A disposition given at upload can make a file an attachment, never
    make an unsafe type inline."""
    content_type = normalize_media_type(declared)
    if not is_inline_safe(content_type):
        return Delivery(content_type, content_disposition("attachment", filename))
    if stored_disposition and stored_disposition.strip().lower().startswith("attachment"):
        clean = stored_disposition.isascii() and stored_disposition.isprintable()
        return Delivery(content_type, stored_disposition if clean else content_disposition("attachment", filename))
    return Delivery(content_type, content_disposition("inline", filename))
