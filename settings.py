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


#: The largest message a user may send, in UTF-8 bytes (APP_MAX_MESSAGE_BYTES), and its bounds.
#: The upper bound comes from the socket: a message travels JSON-escaped (up to 6 characters per
#: byte) in one websocket frame, and the server `chainlit run` starts takes frames of 16 MiB at most.
DEFAULT_MAX_MESSAGE_BYTES = 1024 * 1024
MAX_MESSAGE_BYTES_RANGE = (1024, 2 * 1024 * 1024)


def _max_message_bytes(value: str | None) -> int:
    if value is None or not value.strip():
        return DEFAULT_MAX_MESSAGE_BYTES
    low, high = MAX_MESSAGE_BYTES_RANGE
    try:
        limit = int(value)  # also takes 1_048_576
    except ValueError:
        raise ConfigurationError(f"APP_MAX_MESSAGE_BYTES must be a whole number of bytes, got {value!r}") from None
    if not low <= limit <= high:
        raise ConfigurationError(f"APP_MAX_MESSAGE_BYTES must be between {low} and {high} bytes, got {limit}")
    return limit


#: Login sessions (APP_SESSION_LIFETIME_HOURS): how long a login token is valid unless revoked.
DEFAULT_SESSION_LIFETIME_HOURS = 15 * 24.0


def _env_number(env: Mapping[str, str], name: str, default: float, low: float, high: float) -> float:
    value = (env.get(name) or "").strip()
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ConfigurationError(f"{name} must be a number, got {value!r}") from None
    if not low <= number <= high:
        raise ConfigurationError(f"{name} must be between {low:g} and {high:g}, got {value}")
    return number


def _allowed_origins(value: str | None) -> tuple[str, ...]:
    """APP_ALLOWED_ORIGINS: other origins (`https://host[:port]`) whose pages may call the app
    with the user's login. '*' is refused: with cookie logins it would let any site act as
    the user."""
    origins = []
    for item in filter(None, (part.strip() for part in (value or "").split(","))):
        if item == "*":
            raise ConfigurationError("APP_ALLOWED_ORIGINS must list origins (https://host[:port]); '*' is not allowed")
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
                or parts.query or parts.fragment or parts.username or parts.password:
            raise ConfigurationError(f"APP_ALLOWED_ORIGINS: {item!r} is not an origin like https://chat.example.com[:port]")
        origins.append(f"{parts.scheme}://{parts.netloc.lower()}")
    return tuple(origins)


def _trusted_proxies(value: str | None) -> tuple[str, ...]:
    """APP_TRUSTED_PROXIES: addresses or networks of the reverse proxies whose
    X-Forwarded-For / X-Forwarded-Proto headers are believed; '*' trusts every peer."""
    import ipaddress

    items = tuple(filter(None, (part.strip() for part in (value or "").split(","))))
    for item in items:
        if item == "*":
            continue
        try:
            ipaddress.ip_network(item, strict=False)
        except ValueError:
            raise ConfigurationError(f"APP_TRUSTED_PROXIES: {item!r} is not an IP address or network") from None
    return items


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
    # Sessions, logins and the web front (security): see the README's "Security" section.
    session_lifetime_seconds: int = int(DEFAULT_SESSION_LIFETIME_HOURS * 3600)
    allowed_origins: tuple[str, ...] = ()
    trusted_proxies: tuple[str, ...] = ()
    login_max_failures: int = 10
    login_delay_seconds: float = 1.0
    login_lock_seconds: float = 900.0
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    # The HTTP API (`/api/v1`): requests per minute per token, and the largest JSON body.
    api_rate_per_minute: int = 120
    api_max_body_bytes: int = 2 * 1024 * 1024
    # The knowledge index (documents, linked pages): KNOWLEDGE_URL, None when turned off.
    knowledge_url: str | None = field(default=None, repr=False)
    # Retention the app applies itself (ops/retention.py): threads inactive longer than
    # APP_RETENTION_DAYS are deleted every APP_RETENTION_INTERVAL_HOURS; None: off.
    retention_days: float | None = None
    retention_interval_hours: float = 24.0

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

    def build_knowledge_index(self):
        """The configured knowledge index (not started), or None when KNOWLEDGE_URL is off."""
        if self.knowledge_url is None:
            return None
        from knowledge import KNOWLEDGE_SCHEMES

        return resolve_backend(self.knowledge_url, KNOWLEDGE_SCHEMES, "knowledge index")(self.knowledge_url)

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
        session_lifetime_seconds=round(3600 * _env_number(
            env, "APP_SESSION_LIFETIME_HOURS", DEFAULT_SESSION_LIFETIME_HOURS, 0.01, 24 * 366)),
        allowed_origins=_allowed_origins(env.get("APP_ALLOWED_ORIGINS")),
        trusted_proxies=_trusted_proxies(env.get("APP_TRUSTED_PROXIES")),
        login_max_failures=int(_env_number(env, "APP_LOGIN_MAX_FAILURES", 10, 2, 1000)),
        login_delay_seconds=_env_number(env, "APP_LOGIN_DELAY_SECONDS", 1.0, 0.0, 60.0),
        login_lock_seconds=60 * _env_number(env, "APP_LOGIN_LOCK_MINUTES", 15.0, 0.1, 24 * 60),
        max_message_bytes=_max_message_bytes(env.get("APP_MAX_MESSAGE_BYTES")),
        api_rate_per_minute=int(_env_number(env, "API_RATE_LIMIT_PER_MINUTE", 120, 1, 100_000)),
        api_max_body_bytes=int(_env_number(env, "API_MAX_BODY_BYTES", 2 * 1024 * 1024, 1024, 64 * 1024 * 1024)),
        knowledge_url=_knowledge_url(env, data_dir),
        retention_days=_retention_days(env),
        retention_interval_hours=_env_number(env, "APP_RETENTION_INTERVAL_HOURS", 24.0, 0.01, 24 * 366),
    )


def _retention_days(env: Mapping[str, str]) -> float | None:
    """APP_RETENTION_DAYS: unset or empty turns retention off; a day at least, so that a
    typo cannot delete the conversations of the last hours."""
    if not (env.get("APP_RETENTION_DAYS") or "").strip():
        return None
    return _env_number(env, "APP_RETENTION_DAYS", 0.0, 1, 100 * 366)


def _knowledge_url(env: Mapping[str, str], data_dir: Path) -> str | None:
    from knowledge.config import load_knowledge_config

    return load_knowledge_config(data_dir, env).url
