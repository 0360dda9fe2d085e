"""The API while its database is down (a throwaway PostgreSQL cluster of the test's own,
stopped and started): a clear 503 with Retry-After, never a 500, and everything stored
before the outage is there after it."""

from __future__ import annotations

import pytest

from tests.api.conftest import launch
from tests.conftest import unavailable
from tests.faults.postgres_cluster import ThrowawayCluster, missing_prerequisite


@pytest.fixture
def cluster():
    reason = missing_prerequisite()
    if reason:
        unavailable(reason)
    with ThrowawayCluster() as made:
        yield made


async def test_database_down_is_a_503_and_loses_nothing(request, tmp_path, cluster):
    app = launch(request, tmp_path, "postgresql", cluster.create_database("api_outage"))
    try:
        async with app.client("alice") as http:
            answer = await http.post("/chat", json={"query": "stored before the outage", "stream": False})
            assert answer.status_code == 200, answer.text
            cid = answer.json()["conversation_id"]
            await app.settled()
            cluster.stop()
            down = await http.get("/conversations")
            assert down.status_code == 503, down.text
            assert down.headers["content-type"].startswith("application/problem+json")
            assert int(down.headers["retry-after"]) > 0
            assert "database" in down.json()["detail"]
            cluster.start()
            back = await http.get(f"/conversations/{cid}/messages")
            assert back.status_code == 200, back.text
            assert [m["text"] for m in back.json()["data"]][0] == "stored before the outage"
        assert "Traceback" not in app.log_text()
    finally:
        app.stop()
