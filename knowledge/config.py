"""The knowledge settings an operator sets in the environment (or `.env`).

Plain Python like `chat/config.py`: reading them imports no extraction library, index driver
or model, so the app starts without the `knowledge` extra (documents are then pasted as
before and links are not read). Embedding settings are read by `knowledge/embeddings.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from chat.config import ChatConfigError, _bool, _float, _int

OFF = ("none", "off", "false", "0")


class KnowledgeConfigError(ChatConfigError):
    """A KNOWLEDGE_* setting is invalid."""


@dataclass(frozen=True)
class KnowledgeConfig:
    url: str | None  # None: no index (documents pasted whole as far as they fit; no retrieval)
    read_links: bool = True  # the default of the per-thread setting
    links_allow_private: bool = False
    links_allowed_hosts: tuple[str, ...] = ()
    links_max: int = 5
    links_max_bytes: int = 2_000_000
    links_timeout_seconds: float = 10.0
    top_k: int = 5
    chunk_tokens: int = 350
    chunk_overlap_tokens: int = 60
    #: A document whose text fits in this many tokens goes into the prompt whole.
    whole_document_tokens: int = 2000
    extract_workers: int = 1
    #: A document still being read after this long is refused (a crafted file can keep a parser busy for hours).
    extract_seconds: float = 120.0
    max_pages: int = 2000

    @property
    def enabled(self) -> bool:
        return self.url is not None


def load_knowledge_config(data_dir: Path, env: Mapping[str, str]) -> KnowledgeConfig:
    raw = (env.get("KNOWLEDGE_URL") or "").strip()
    if raw.lower() in OFF:
        url = None
    else:
        url = raw or f"sqlite:///{data_dir / 'knowledge.sqlite3'}"
    hosts = tuple(h.strip().lower() for h in (env.get("KNOWLEDGE_LINKS_ALLOWED_HOSTS") or "").split(",") if h.strip())
    top_k = _int(env, "KNOWLEDGE_TOP_K", 5, low=1)
    if top_k > 9:  # sources are named "Source 1" … "Source 9": "Source 1" would also mark "Source 10"
        raise KnowledgeConfigError(f"KNOWLEDGE_TOP_K must be between 1 and 9, got {top_k}")
    chunk_tokens = _int(env, "KNOWLEDGE_CHUNK_TOKENS", 350, low=50)
    overlap = _int(env, "KNOWLEDGE_CHUNK_OVERLAP_TOKENS", 60, low=0)
    if overlap >= chunk_tokens:
        raise KnowledgeConfigError("KNOWLEDGE_CHUNK_OVERLAP_TOKENS must be smaller than KNOWLEDGE_CHUNK_TOKENS")
    return KnowledgeConfig(
        url=url,
        read_links=_bool(env, "KNOWLEDGE_READ_LINKS", True),
        links_allow_private=_bool(env, "KNOWLEDGE_LINKS_ALLOW_PRIVATE", False),
        links_allowed_hosts=hosts,
        links_max=_int(env, "KNOWLEDGE_LINKS_MAX", 5, low=0),
        links_max_bytes=_int(env, "KNOWLEDGE_LINKS_MAX_BYTES", 2_000_000, low=1024),
        links_timeout_seconds=_float(env, "KNOWLEDGE_LINKS_TIMEOUT_SECONDS", 10.0, low=0.1, high=300.0),
        top_k=top_k,
        chunk_tokens=chunk_tokens,
        chunk_overlap_tokens=overlap,
        whole_document_tokens=_int(env, "KNOWLEDGE_WHOLE_DOCUMENT_TOKENS", 2000, low=0),
        extract_workers=_int(env, "KNOWLEDGE_EXTRACT_WORKERS", 1, low=1),
        extract_seconds=_float(env, "KNOWLEDGE_EXTRACT_SECONDS", 120.0, low=1.0, high=3600.0),
        max_pages=_int(env, "KNOWLEDGE_MAX_PAGES", 2000, low=1),
    )
