"""Configuration from the environment (and an optional `.env`), and the factories that turn
it into a data layer and a storage client.

Backends are chosen by URL scheme (`DATABASE_URL`, `STORAGE_URL`), looked up in small
registries (`datalayers.DATA_LAYER_SCHEMES`, `storage.STORAGE_SCHEMES`) that name a class by
import path, so nothing optional is imported until it is used, and a missing SDK is reported
with the pip extra that installs it (fsspec's pattern). A developer can instead point
`DATA_LAYER_CLASS` / `STORAGE_CLASS` at their own `package.module:Class`.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib
import importlib.util
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

PROJECT = "chainlit-persist"


class ConfigurationError(ValueError):
    """A setting is invalid (unknown scheme, malformed URL, bad class path)."""


class MissingExtra(ImportError):
    """A backend's optional dependency is not installed; the message names the extra."""


def redact_url(url: str | None) -> str | None:
    """The URL with any password (and secret-looking query values) replaced by `***`."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
    except ValueError:
        return "***"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        if ":" in userinfo:
            userinfo = userinfo.split(":", 1)[0] + ":***"
        netloc = f"{userinfo}@{host}"
    query = "&".join(
        (kv.split("=", 1)[0] + "=***")
        if any(s in kv.split("=", 1)[0].lower() for s in ("key", "secret", "password", "token", "sig"))
        else kv
        for kv in parts.query.split("&")
        if kv
    )
    # Rebuilt by hand: urlunsplit drops the empty authority of `sqlite:////abs/path`.
    rebuilt = f"{parts.scheme}://{netloc}{parts.path}" if "//" in url else f"{parts.scheme}:{parts.path}"
    return rebuilt + (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")


def url_scheme(url: str) -> str:
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise ConfigurationError(f"not a URL (no scheme): {redact_url(url)!r}")
    return scheme


def load_object(path: str) -> Any:
    """Import `package.module:Name` and return the named attribute."""
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(f"expected 'package.module:Name', got {path!r}")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigurationError(f"{module_name!r} has no attribute {attr!r}") from None


def resolve_backend(url: str, registry: Mapping[str, tuple], kind: str) -> type:
    """The class registered for `url`'s scheme.

    A registry value is `("module:Class", extra)` or `("module:Class", extra, modules)`,
    where `modules` are driver modules that must be importable (SQLAlchemy imports its
    drivers lazily, so a missing one would otherwise surface only on first query).
    """
    scheme = url_scheme(url)
    entry = registry.get(scheme)
    if entry is None:
        known = ", ".join(sorted(registry))
        raise ConfigurationError(f"unknown {kind} URL scheme {scheme!r}; known schemes: {known}")
    target, extra, *rest = entry
    hint = f"pip install '{PROJECT}[{extra}]'" if extra else f"pip install '{PROJECT}'"
    for module in (rest[0] if rest else ()):
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(f"{kind} scheme {scheme!r} needs the {module!r} package: {hint}")
    try:
        return load_object(target)
    except ModuleNotFoundError as exc:
        raise MissingExtra(f"{kind} scheme {scheme!r} needs {exc.name!r}: {hint}") from exc


def _env_bool(value: str | None, default: bool) -> bool:
    if value is None or value == "":
        return default
    if value.lower() in ("1", "true", "yes", "on"):
        return True
    if value.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigurationError(f"expected a boolean, got {value!r}")


def _persistent_secret(data_dir: Path) -> str:
    """A random secret kept in the data folder, so restarts keep sessions and signed URLs."""
    path = data_dir / "auth_secret"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value)
    return value


@dataclass(frozen=True)
class Settings:
    data_dir: Path
    database_url: str = field(repr=False)
    storage_url: str = field(repr=False)
    auth_secret: str = field(repr=False)
    auto_migrate: bool = True
    data_layer_class: str | None = None
    storage_class: str | None = None
    journal_path: Path | None = None
    journal_sync: str = "FULL"

    def __repr__(self) -> str:  # never print passwords or secrets
        return (
            f"Settings(data_dir={str(self.data_dir)!r}, database_url={redact_url(self.database_url)!r}, "
            f"storage_url={redact_url(self.storage_url)!r}, "
            f"auto_migrate={self.auto_migrate}, data_layer_class={self.data_layer_class!r}, "
            f"storage_class={self.storage_class!r}, journal_path={str(self.journal_path)!r})"
        )

    @property
    def storage_secret(self) -> bytes:
        """Key for the local client's signed URLs, derived so it differs from the auth secret."""
        return hmac.new(self.auth_secret.encode(), b"storage-url-signing", hashlib.sha256).digest()

    @property
    def cursor_secret(self) -> bytes:
        """Key for the sidebar's page cursors: stable across restarts and app instances."""
        return hmac.new(self.auth_secret.encode(), b"page-cursor-signing", hashlib.sha256).digest()

    def build_storage(self):
        from storage import STORAGE_SCHEMES

        cls = (
            load_object(self.storage_class)
            if self.storage_class
            else resolve_backend(self.storage_url, STORAGE_SCHEMES, "storage")
        )
        return cls.from_url(self.storage_url, data_dir=self.data_dir, secret=self.storage_secret)

    def build_data_layer(self, storage=None):
        """The configured data layer, with the configured storage client unless given one."""
        from datalayers import DATA_LAYER_SCHEMES

        cls = (
            load_object(self.data_layer_class)
            if self.data_layer_class
            else resolve_backend(self.database_url, DATA_LAYER_SCHEMES, "database")
        )
        from datalayers.base import PersistentDataLayer
        from datalayers.journal import WriteJournal

        options: dict[str, Any] = {}
        if isinstance(cls, type) and issubclass(cls, PersistentDataLayer):
            # Our layers (and subclasses of them) journal their writes and sign cursors
            # with a secret that outlives the process; a foreign class gets the plain call.
            options = {"cursor_secret": self.cursor_secret,
                       "journal": WriteJournal(self.journal_path, synchronous=self.journal_sync)}
        return cls.from_url(
            self.database_url,
            storage=storage if storage is not None else self.build_storage(),
            auto_migrate=self.auto_migrate,
            **options,
        )


def load_settings(env: Mapping[str, str] | None = None, *, dotenv: bool = True, export_secret: bool = True) -> Settings:
    """Read the settings. With `env=None` the process environment (plus `.env`) is used.

    `export_secret` puts a generated `CHAINLIT_AUTH_SECRET` into os.environ, because
    Chainlit refuses to start login without one and we want the run command to work on a
    fresh machine without hand-editing.
    """
    if env is None:
        if dotenv:
            from dotenv import load_dotenv

            load_dotenv(override=False)
        env = os.environ
    data_dir = Path(env.get("APP_DATA_DIR") or ".data").expanduser().resolve()
    database_url = env.get("DATABASE_URL") or f"sqlite+aiosqlite:///{data_dir / 'chainlit.db'}"
    storage_url = env.get("STORAGE_URL") or (data_dir / "files").as_uri()
    auth_secret = env.get("CHAINLIT_AUTH_SECRET") or _persistent_secret(data_dir)
    journal_setting = env.get("WRITE_JOURNAL_PATH") or str(data_dir / "journal.sqlite3")
    journal_sync = (env.get("WRITE_JOURNAL_SYNC") or "full").upper()
    if journal_sync not in ("FULL", "NORMAL"):
        raise ConfigurationError(f"WRITE_JOURNAL_SYNC must be 'full' or 'normal', got {journal_sync.lower()!r}")
    if export_secret and env is os.environ and not os.environ.get("CHAINLIT_AUTH_SECRET"):
        os.environ["CHAINLIT_AUTH_SECRET"] = auth_secret
    return Settings(
        data_dir=data_dir,
        database_url=database_url,
        storage_url=storage_url,
        auth_secret=auth_secret,
        auto_migrate=_env_bool(env.get("DATABASE_AUTO_MIGRATE"), True),
        data_layer_class=env.get("DATA_LAYER_CLASS") or None,
        storage_class=env.get("STORAGE_CLASS") or None,
        # "memory" keeps no journal on disk: a crash loses writes the database did not have yet.
        journal_path=None if journal_setting == "memory" else Path(journal_setting).expanduser().resolve(),
        journal_sync=journal_sync,
    )
