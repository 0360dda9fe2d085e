"""STORAGE_SCHEMES: every scheme names an importable client and a real pip extra, and
importing the package loads no cloud SDK."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from storage import STORAGE_SCHEMES, BlobStorage
from tests.storage.conftest import require

ROOT = Path(__file__).resolve().parents[2]
SDK_OF_EXTRA = {"aws": "aioboto3", "azure": "azure.storage.filedatalake.aio"}


def load_client(scheme: str) -> type:
    """The class a scheme names; its SDK may be absent locally (skip), never in CI."""
    target, extra = STORAGE_SCHEMES[scheme]
    if extra:
        require(SDK_OF_EXTRA[extra])
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def test_importing_storage_loads_no_sdk():
    code = (
        "import sys, storage, storage.local, storage.memory\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in ('boto3', 'botocore', 'aioboto3', 'aiobotocore', 'azure'))\n"
        "print(loaded)\n"
        "sys.exit(1 if loaded else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_extras_exist_in_pyproject():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for scheme, (_, extra) in STORAGE_SCHEMES.items():
        assert extra is None or extra in extras, f"{scheme}: no extra {extra!r}"


@pytest.mark.parametrize("scheme", sorted(STORAGE_SCHEMES))
def test_every_scheme_resolves_to_a_client_with_from_url(scheme):
    cls = load_client(scheme)
    assert issubclass(cls, BlobStorage)
    assert callable(getattr(cls, "from_url", None))


@pytest.mark.parametrize(
    "url, extra",
    [
        ("memory://", None),
        ("file:///tmp/chainlit-persist-registry-test", None),
        ("s3://bucket/prefix?region=eu-west-1", "aws"),
        ("abfs://c@acct.dfs.core.windows.net/p?account_key=a2V5", "azure"),
        ("abfss://c@acct.dfs.core.windows.net/p?account_key=a2V5", "azure"),
    ],
)
async def test_from_url_dispatch(url, extra, tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_KEY", raising=False)
    scheme = url.split(":", 1)[0]
    assert STORAGE_SCHEMES[scheme][1] == extra
    cls = load_client(scheme)
    storage = cls.from_url(url, data_dir=tmp_path, secret=b"k" * 32)
    try:
        assert type(storage) is cls
    finally:
        await storage.close()

