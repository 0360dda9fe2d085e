"""Schemathesis over the API's own OpenAPI document, against the real app on SQLite and
PostgreSQL: for generated valid and invalid requests of every operation, no 5xx, and every
response's status, content type and body match what the document declares.

Run through Schemathesis's own command line (its pytest loader does not support this
pytest), with a fixed seed so a failure can be replayed, and one worker: its workers are
threads, and CPython 3.11's `ast.parse` (which Hypothesis calls) can fail when two threads
parse at once ("AST constructor recursion depth mismatch")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx

# Thousands of requests with one token: the rate limit would answer most of them.
APP_ENV = {"API_RATE_LIMIT_PER_MINUTE": "100000"}
CHECKS = "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance"


def test_every_operation_matches_its_document(api_app, tmp_path: Path):
    schemathesis = Path(sys.executable).with_name("schemathesis")
    done = subprocess.run(
        [str(schemathesis), "run", f"{api_app.url}/api/v1/openapi.json",
         "-H", f"Authorization: Bearer {api_app.tokens['alice']}", "--checks", CHECKS,
         "--max-examples", "20", "--seed", "20261202", "--workers", "1", "--request-timeout", "60",
         "--phases", "examples,coverage,fuzzing", "--suppress-health-check", "all", "--max-time", "150",
         "--report", "junit", "--report-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
        env={**__import__("os").environ, "NO_COLOR": "1"})
    output = done.stdout + done.stderr
    (tmp_path / "schemathesis.txt").write_text(output)
    assert done.returncode == 0, output[-12000:]
    assert "operations" in output.lower() or "passed" in output.lower(), output[-3000:]
    assert "Traceback" not in api_app.log_text()


def test_the_document_and_the_docs_page(api_app):
    document = httpx.get(f"{api_app.url}/api/v1/openapi.json", timeout=30).json()
    paths = set(document["paths"])
    assert {"/conversations", "/conversations/{conversation_id}", "/conversations/{conversation_id}/messages",
            "/conversations/{conversation_id}/files", "/messages/{message_id}/feedback", "/chat",
            "/openai/chat/completions", "/openai/models", "/tokens"} <= paths
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    page = httpx.get(f"{api_app.url}/api/v1/docs", timeout=30)
    assert page.status_code == 200 and "swagger-ui-bundle.js" in page.text
    asset = httpx.get(f"{api_app.url}/api/v1/docs-assets/swagger-ui-bundle.js", timeout=30)
    assert asset.status_code == 200 and len(asset.content) > 100_000  # served by the app, no CDN
