"""The doctor: the configuration checked end to end, each check a line — ok, warning or
failed — with what to fix. Nothing is changed, except a probe object written to storage
under `doctor/` and deleted again; the schema is never migrated (that is `migrate`).

    settings   the environment and `.env` parse (the app's own `load_settings`)
    database   reachable within the timeout, and SQL migrated to Alembic's head /
               DynamoDB: the table exists, is ACTIVE and has the UserThread index with
               the projection `upgrade` gives
    storage    a probe written, read back and deleted; and signing: a read URL that
               fetches the bytes (S3, Azure) or, for local files, whose signature the
               app's download route accepts (checked offline: the route is the app's)
    model      a one-token completion from the configured OpenAI-compatible endpoint
               (offline provider: no model to ask)
    knowledge  the knowledge index answers (KNOWLEDGE_URL off: nothing to check)
    journal    the app's write journal, read-only: writes still waiting or refused
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

OK, WARNING, FAILED = "ok", "warning", "failed"
DEFAULT_TIMEOUT = 10.0
PROBE_PREFIX = "doctor/"


@dataclass
class Check:
    name: str
    status: str
    detail: str
    fix: str = ""


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


async def _bounded(work: Awaitable[Any], timeout: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(work, timeout)
    except TimeoutError:
        raise TimeoutError(f"no answer from {what} within {timeout:g} s") from None


# ---------------------------------------------------------------------- database
async def check_database(settings: Any, timeout: float) -> Check:
    from settings import redact_url

    where = redact_url(settings.database_url) or ""
    try:
        from chat.private_files import sqlite_path

        database_file = sqlite_path(settings.database_url)
    except Exception:  # not a URL SQLAlchemy parses (DynamoDB): checked below
        database_file = None
    if database_file is not None and not database_file.exists():
        # Connecting would create an empty file: the doctor changes nothing.
        return Check("database", FAILED, f"{where}: no database file at {database_file}",
                     "start the app once (it creates and migrates it), or fix DATABASE_URL")
    try:
        layer = replace(settings, journal_path=None, auto_migrate=False).build_data_layer(
            storage=_NoStorage())
    except Exception as exc:
        return Check("database", FAILED, f"{where}: {_error(exc)}", "fix DATABASE_URL (or install the extra named)")
    try:
        if hasattr(layer, "engine"):
            return await _bounded(_check_sql(layer, where), timeout, where)
        if hasattr(layer, "table_name") and hasattr(layer, "table"):
            return await _bounded(_check_dynamodb(layer, where), timeout, where)
        return Check("database", WARNING, f"{type(layer).__name__}: not a data layer the doctor knows; not checked")
    except Exception as exc:
        return Check("database", FAILED, f"{where} unreachable: {_error(exc)}",
                     "start the database server, or fix host, port, credentials in DATABASE_URL")
    finally:
        try:
            await layer.close()
        except Exception:  # closing a layer that never connected: the check said what failed
            pass


async def _check_sql(layer: Any, where: str) -> Check:
    from alembic.script import ScriptDirectory
    from sqlalchemy import text

    from datalayers import migrations

    async with layer.engine.connect() as conn:
        await conn.execute(text("SELECT 1"))
        current = await conn.run_sync(migrations.current_revision_sync)
    head = ScriptDirectory(migrations.SCRIPT_LOCATION).get_current_head()
    if current == head:
        return Check("database", OK, f"{where} reachable, schema at revision {head} (head)")
    fix = "chainlit-persist migrate (the app also migrates on start unless DATABASE_AUTO_MIGRATE=false)"
    if current is None:
        return Check("database", FAILED, f"{where} reachable, but has no schema (no Alembic revision)", fix)
    return Check("database", FAILED, f"{where} reachable, schema at revision {current}, head is {head}", fix)


async def _check_dynamodb(layer: Any, where: str) -> Check:
    from botocore.exceptions import ClientError

    from datalayers.dynamodb.client import DynamoDBError
    from datalayers.dynamodb.provision import check_table_description

    client = await layer.table.open()
    try:
        table = (await client.describe_table(TableName=layer.table_name))["Table"]
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == "ResourceNotFoundException":
            return Check("database", FAILED, f"{where}: table {layer.table_name!r} does not exist",
                         "chainlit-persist provision (or deploy cloudformation/)")
        raise
    if table.get("TableStatus") != "ACTIVE":
        return Check("database", WARNING, f"{where}: table is {table.get('TableStatus')}, not ACTIVE yet",
                     "wait for the table (or its index) to finish building")
    try:
        check_table_description(table)
    except DynamoDBError as exc:
        return Check("database", FAILED, f"{where}: {exc}", "chainlit-persist upgrade")
    return Check("database", OK, f"{where}: table ACTIVE, UserThread index with the expected projection")


class _NoStorage:
    """The database check builds a layer without touching storage (checked on its own)."""

    async def close(self) -> None:
        return None


# ---------------------------------------------------------------------- storage
async def check_storage(settings: Any, timeout: float) -> list[Check]:
    from settings import redact_url

    where = redact_url(settings.storage_url) or ""
    try:
        storage = settings.build_storage()
    except Exception as exc:
        return [Check("storage", FAILED, f"{where}: {_error(exc)}", "fix STORAGE_URL (or install the extra named)")]
    try:
        return await _bounded(_probe(storage, where), timeout, where)
    except Exception as exc:
        return [Check("storage", FAILED, f"{where}: {_error(exc)}",
                      "check that the bucket / file system / folder exists and that the app's credentials may "
                      "write, read and delete in it")]
    finally:
        await storage.close()


async def _probe(storage: Any, where: str) -> list[Check]:
    from storage.base import ObjectNotFound

    key = f"{PROBE_PREFIX}probe-{uuid.uuid4().hex}.txt"
    body = f"chainlit-persist doctor {time.time()}".encode()
    await storage.upload_file(key, body, "text/plain")
    try:
        if await storage.read_file(key) != body:
            return [Check("storage", FAILED, f"{where}: the probe read back differs from what was written",
                          "the store does not keep what is written: check its configuration")]
        signing = await _check_signing(storage, key, body, where)
    finally:
        await storage.delete_file(key)
    try:
        await storage.read_file(key)
    except ObjectNotFound:
        pass
    else:
        return [Check("storage", FAILED, f"{where}: the probe is still there after delete",
                      "the credentials may not delete: deleted threads would leave their files")]
    return [Check("storage", OK, f"{where}: write, read and delete work"), signing]


async def _check_signing(storage: Any, key: str, body: bytes, where: str) -> Check:
    url = await storage.get_read_url(key, "text/plain")
    if hasattr(storage, "verify_signature"):
        # The local client's links are served by the app's own route: check the signature
        # the route checks, and that a forged one is refused.
        query = dict(parse_qsl(urlsplit(url).query))
        good = storage.verify_signature(key, query.get("exp"), query.get("sig"))
        forged = storage.verify_signature(key, query.get("exp"), "0" * 64)
        if good and not forged:
            return Check("signing", OK, "read links are signed and the download route accepts them")
        return Check("signing", FAILED, "read links do not verify", "the storage secret changed while running?")
    if not getattr(storage, "signs_urls", True) or not url.startswith(("http://", "https://")):
        return Check("signing", WARNING, f"{where}: read links are not HTTP links that can be checked here")
    import httpx

    async with httpx.AsyncClient(follow_redirects=False) as client:
        response = await client.get(url)
    if response.status_code == 200 and response.content == body:
        return Check("signing", OK, "a signed read link fetches the file")
    return Check("signing", FAILED, f"a signed read link answered {response.status_code}",
                 "the credentials must be allowed to sign (S3: s3:GetObject; Azure: an account key or the "
                 "Storage Blob Delegator role), and the store's clock must be right")


# ---------------------------------------------------------------------- model
async def check_model(timeout: float) -> Check:
    from chat.config import load_chat_config

    try:
        config = load_chat_config()
    except Exception as exc:
        return Check("model", FAILED, _error(exc), "fix the LLM_* / OPENAI_* settings")
    if config.offline:
        return Check("model", OK, "offline provider: no model to ask (set OPENAI_BASE_URL or OPENAI_API_KEY)")
    where = config.base_url or "https://api.openai.com/v1"
    try:
        from openai import AsyncOpenAI
    except ImportError:
        return Check("model", FAILED, "the openai package is not installed", "pip install 'chainlit-persist[llm]'")
    client = AsyncOpenAI(api_key=config.api_key or "not-needed", base_url=config.base_url, timeout=timeout,
                         max_retries=0)
    try:
        await _bounded(client.chat.completions.create(
            model=config.model, messages=[{"role": "user", "content": "Reply with OK."}], max_tokens=1,
        ), timeout, where)
    except Exception as exc:
        status = getattr(exc, "status_code", None)
        fix = {401: "check OPENAI_API_KEY", 403: "check OPENAI_API_KEY", 404: f"is LLM_MODEL={config.model!r} served "
               "there?"}.get(status or 0, "check that the endpoint runs and OPENAI_BASE_URL points at it")
        return Check("model", FAILED, f"{where} ({config.model}): {_error(exc)}", fix)
    finally:
        await client.close()
    return Check("model", OK, f"{where} answers with model {config.model}")


# ---------------------------------------------------------------------- knowledge
async def check_knowledge(settings: Any, timeout: float) -> Check:
    try:
        index = settings.build_knowledge_index()
    except Exception as exc:
        return Check("knowledge", FAILED, _error(exc), "fix KNOWLEDGE_URL (or install the extra named), or set it to off")
    if index is None:
        return Check("knowledge", OK, "off (KNOWLEDGE_URL=off): documents are given to the model whole")
    path = getattr(index, "path", None)
    if isinstance(path, str) and path != ":memory:" and not Path(path).exists():
        return Check("knowledge", OK, f"{path}: none yet (created on the app's first start)")
    try:
        await _bounded(index.start(None), timeout, "the knowledge index")
        chunks = await _bounded(index.count(), timeout, "the knowledge index")
    except Exception as exc:
        return Check("knowledge", FAILED, f"{type(index).__name__}: {_error(exc)}",
                     "start the index's server or fix KNOWLEDGE_URL; the chat goes on without retrieval meanwhile")
    finally:
        try:
            await index.close()
        except Exception:  # an index that never opened: the check already says why
            pass
    return Check("knowledge", OK, f"{type(index).__name__} answers, {chunks} chunk(s)")


# ---------------------------------------------------------------------- journal
def check_journal(settings: Any) -> Check:
    from .journal_view import read_journal

    try:
        state = read_journal(settings.journal_path)
    except OSError as exc:
        return Check("journal", FAILED, _error(exc), "check the file's permissions (the app's user owns it)")
    if state is None:
        return Check("journal", WARNING, "WRITE_JOURNAL_PATH=memory: a crash loses writes not yet in the database",
                     "give the app a journal file (the default is <APP_DATA_DIR>/journal.sqlite3)")
    if not state.exists:
        return Check("journal", OK, f"{state.path}: none yet (created on the app's first start)")
    if state.rejected:
        return Check("journal", WARNING, f"{state.path}: {state.pending} write(s) waiting, {state.rejected} refused "
                     "for good (kept in its `rejected` table)",
                     "read the app's log for why they were refused; they are not in the database")
    if state.pending:
        return Check("journal", WARNING, f"{state.path}: {state.pending} write(s) waiting for the database "
                     f"(oldest {state.oldest_seconds:.0f} s)",
                     "the app applies them when the database answers; if the app is stopped, start it")
    return Check("journal", OK, f"{state.path}: empty")


# ---------------------------------------------------------------------- all
async def run_checks(timeout: float = DEFAULT_TIMEOUT, *,
                     load: Callable[[], Any] | None = None) -> list[Check]:
    """Every check, in order; a failed settings check stops the rest (they need them)."""
    from settings import load_settings

    try:
        settings = (load or (lambda: load_settings(dotenv=False, export_secret=False)))()
    except Exception as exc:
        return [Check("settings", FAILED, _error(exc), "fix the variable named in the environment or .env")]
    checks = [Check("settings", OK, repr(settings))]
    checks.append(await check_database(settings, timeout))
    checks.extend(await check_storage(settings, timeout))
    checks.append(await check_model(timeout))
    checks.append(await check_knowledge(settings, timeout))
    checks.append(check_journal(settings))
    return checks


def as_dict(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not any(c.status == FAILED for c in checks), "checks": [asdict(c) for c in checks]}
