"""Configuration: URL → backend resolution, defaults, secrets kept out of reprs and logs."""

from __future__ import annotations

import logging

import pytest

from datalayers import DATA_LAYER_SCHEMES
from datalayers.sqlalchemy import SQLAlchemyDataLayer, normalize_database_url
from settings import ConfigurationError, MissingExtra, load_settings, redact_url, resolve_backend


def test_defaults_are_embedded_sqlite_and_local_files(tmp_path):
    settings = load_settings({"APP_DATA_DIR": str(tmp_path)})
    assert settings.database_url == f"sqlite+aiosqlite:///{tmp_path / 'chainlit.db'}"
    assert settings.storage_url == (tmp_path / "files").as_uri()
    assert settings.auto_migrate is True


def test_generated_auth_secret_is_persisted_privately(tmp_path):
    first = load_settings({"APP_DATA_DIR": str(tmp_path)})
    second = load_settings({"APP_DATA_DIR": str(tmp_path)})
    assert first.auth_secret == second.auth_secret and len(first.auth_secret) >= 32
    assert (tmp_path / "auth_secret").stat().st_mode & 0o077 == 0
    assert load_settings({"APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "given"}).auth_secret == "given"


@pytest.mark.parametrize(
    "url, expected",
    [
        ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("sqlite+aiosqlite:///x.db", "sqlite+aiosqlite:///x.db"),
        ("postgresql://u:p@h:5432/db", "postgresql+asyncpg://u:p@h:5432/db"),
        ("postgres://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("postgresql+asyncpg://u@h/db", "postgresql+asyncpg://u@h/db"),
        ("mysql://root@h:3306/db", "mysql+aiomysql://root@h:3306/db?charset=utf8mb4"),
        ("mariadb://root@h/db", "mariadb+aiomysql://root@h/db?charset=utf8mb4"),
        ("mysql+aiomysql://root@h/db?charset=latin1", "mysql+aiomysql://root@h/db?charset=latin1"),
    ],
)
def test_plain_scheme_names_get_the_async_driver(url, expected):
    assert normalize_database_url(url) == expected
    assert resolve_backend(url, DATA_LAYER_SCHEMES, "database") is SQLAlchemyDataLayer


def test_unknown_scheme_lists_the_known_ones():
    with pytest.raises(ConfigurationError) as info:
        resolve_backend("oracle://x/y", DATA_LAYER_SCHEMES, "database")
    message = str(info.value)
    assert "'oracle'" in message
    for scheme in ("sqlite", "postgresql", "mysql", "dynamodb"):
        assert scheme in message


def test_not_a_url_is_a_clear_error():
    with pytest.raises(ConfigurationError, match="no scheme"):
        resolve_backend("just-a-path.db", DATA_LAYER_SCHEMES, "database")


def test_missing_driver_names_the_extra():
    registry = {"fancy": ("datalayers.sqlalchemy:SQLAlchemyDataLayer", "fancy", ("no_such_driver_module",))}
    with pytest.raises(MissingExtra, match=r"pip install 'chainlit-persist\[fancy\]'"):
        resolve_backend("fancy://db", registry, "database")
    registry = {"gone": ("no_such_package.module:Layer", "gone")}
    with pytest.raises(MissingExtra, match=r"\[gone\]"):
        resolve_backend("gone://db", registry, "database")


def test_passwords_never_appear_in_reprs_or_logs(tmp_path, caplog):
    url = "postgresql://app:s3cr3t-pw@db.example.com:5432/chat"
    assert "s3cr3t-pw" not in redact_url(url)
    assert redact_url(url) == "postgresql://app:***@db.example.com:5432/chat"
    assert "s3cr3t-pw" not in redact_url("s3://bucket/p?secret_key=s3cr3t-pw&region=eu")
    assert redact_url("s3://bucket/p?secret_key=s3cr3t-pw&region=eu") == "s3://bucket/p?secret_key=***&region=eu"
    assert redact_url("sqlite+aiosqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert redact_url("memory://") == "memory://"
    settings = load_settings({"APP_DATA_DIR": str(tmp_path), "DATABASE_URL": url, "CHAINLIT_AUTH_SECRET": "topsecret"})
    assert "s3cr3t-pw" not in repr(settings) and "topsecret" not in repr(settings)
    layer = SQLAlchemyDataLayer(url)
    assert "s3cr3t-pw" not in repr(layer)


async def test_database_errors_surface_with_context_and_no_password(tmp_path, caplog):
    from datalayers.sqlalchemy import DataLayerError

    layer = SQLAlchemyDataLayer("postgresql://app:s3cr3t-pw@127.0.0.1:1/nowhere", auto_migrate=False)
    with caplog.at_level(logging.ERROR), pytest.raises(DataLayerError, match="get_user failed") as info:
        await layer.get_user("someone")
    await layer.close()
    assert "identifier='someone'" in str(info.value)
    assert "get_user failed" in caplog.text
    assert "s3cr3t-pw" not in caplog.text and "s3cr3t-pw" not in str(info.value)


def test_build_data_layer_from_settings(tmp_path):
    settings = load_settings({"APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "x" * 40})
    layer = settings.build_data_layer()
    assert isinstance(layer, SQLAlchemyDataLayer)
    assert type(layer.storage).__name__ == "LocalStorage"


def test_a_developer_class_can_be_named(tmp_path):
    settings = load_settings({
        "APP_DATA_DIR": str(tmp_path), "CHAINLIT_AUTH_SECRET": "x" * 40,
        "DATA_LAYER_CLASS": "tests.datalayers.test_custom_subclass:AuditedDataLayer",
        "STORAGE_URL": "memory://",
    })
    layer = settings.build_data_layer()
    assert type(layer).__name__ == "AuditedDataLayer"
    assert type(layer.storage).__name__ == "MemoryStorage"
    with pytest.raises(ConfigurationError):
        load_settings({"APP_DATA_DIR": str(tmp_path), "DATA_LAYER_CLASS": "no-colon"}).build_data_layer()


def test_bad_boolean_setting_is_an_error(tmp_path):
    with pytest.raises(ConfigurationError):
        load_settings({"APP_DATA_DIR": str(tmp_path), "DATABASE_AUTO_MIGRATE": "maybe"})
