"""Attacks on attachments, against the real app on SQLite and PostgreSQL (two users, alice and
bob, speaking the browser's protocol: HTTP and Socket.IO), and headless Chromium for the XSS.

* Stored XSS: a page uploaded as `x.png` with the type `image/png,text/html` (which passes
  Chainlit's `image/*` accept rule, and which Chromium renders as HTML) is stored as
  `application/octet-stream`, served as a sandboxed download, and runs no script in Chromium
  on the app's origin — while the same bytes and type, served without those headers on the
  same origin, do run (the control that proves the check can fail).
* Ownership: bob, who learnt the id of alice's attachment from her shared thread, can neither
  delete nor replace it through `DELETE`/`PUT /project/element` and his own socket session:
  404, and alice's file and row are untouched; alice herself still can.
* Storage faults: an upload the file store cannot take (its folders replaced by files, as
  unwritable as a full or read-only disk) is reported in the chat, logged with its context,
  and leaves no blob and no row; a thread whose blobs cannot be deleted is still deleted (a
  retry answers 404, never 500) and the blobs go once the store works again.

The app's storage is `tests/storage/switchable.py` (the local store, whose deletes can be
switched off from here). Uploads wait for their message in a folder of the app instance's own,
not in Chainlit's `.files`, which another instance's shutdown would delete.
"""

from __future__ import annotations

import asyncio
import shutil
import time
import uuid
from datetime import UTC, datetime
from urllib.parse import urljoin

import pytest

from tests.e2e.app_runner import ROOT
from tests.e2e.test_browser import CHROMIUM, CHROMIUM_ARGS, browser_ready  # noqa: F401  (fixture)
from tests.security.conftest import BACKENDS, database_url, launch_app
from tests.storage.switchable import SWITCH

PAYLOAD = (
    b'<html><body><script>console.log("XSS-RAN");'
    b'fetch("/project/threads",{method:"POST",headers:{"content-type":"application/json"},'
    b'body:JSON.stringify({pagination:{first:20},filter:{}})}).then(r=>r.text())'
    b'.then(t=>console.log("XSS-RAN read "+t.length))</script>'
    b'<img src="nothing" onerror="console.log(\'XSS-RAN\')"></body></html>'
)
SANDBOX = "sandbox; default-src 'none'"


@pytest.fixture(scope="module", params=BACKENDS)
def security_app(request, tmp_path_factory):
    """The shared fixture's app (alice and bob), with the switchable local store."""
    backend = request.param
    tmp = tmp_path_factory.mktemp(f"uploads-{backend}")
    app = launch_app(tmp, database_url(request, backend, tmp), backend,
                     STORAGE_CLASS="tests.storage.switchable:SwitchableLocalStorage")
    app.files = tmp / "files"
    try:
        yield app
    finally:
        app.stop()


# ---------------------------------------------------------------------- helpers
async def upload(app, client, name: str, body: bytes, content_type: str) -> str:
    """`POST /project/file` as the browser does before sending a message; the file's id."""
    async with app.http(client) as http:
        response = await http.post("/project/file", params={"session_id": client.session_id},
                                   files={"file": (name, body, content_type)})
    assert response.status_code == 200, response.text
    return response.json()["id"]


async def send_with_files(client, text: str, file_ids: list[str]) -> None:
    """A user message carrying uploaded files (`fileReferences`), answered in full."""
    step = {"threadId": "", "id": str(uuid.uuid4()), "name": client.identifier, "type": "user_message",
            "output": text, "createdAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "metadata": {}}
    mark = len(client.events)
    await client._sio.emit("client_message", {"message": step, "fileReferences": [{"id": i} for i in file_ids]})
    await client.wait_for(lambda: client._task_done(mark), 60, f"the answer to {text!r}")


async def thread_of(app, client, thread_id: str):
    async with app.http(client) as http:
        return await http.get(f"/project/thread/{thread_id}")


async def wait_for_element(app, client, name: str, timeout: float = 20) -> dict:
    """The stored element called `name` in the client's thread, once it is saved."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await thread_of(app, client, client.thread_id)
        if response.status_code == 200:
            found = [e for e in response.json()["elements"] if e["name"] == name]
            if found:
                return found[0]
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} was not saved in thread {client.thread_id} within {timeout}s")


async def fetch_blob(app, url: str):
    async with app.http() as http:
        return await http.get(urljoin(app.url, url))


async def attach(app, client, name: str, body: bytes, content_type: str, text: str = "my file") -> dict:
    if not client.connected:
        await client.connect()
    file_id = await upload(app, client, name, body, content_type)
    await send_with_files(client, text, [file_id])
    return await wait_for_element(app, client, name)


def full_log(app) -> str:
    app.running.log.flush()
    return app.running.log_path.read_text(errors="replace")


# ---------------------------------------------------------------------- where uploads wait
async def test_uploads_wait_in_a_folder_of_this_instance(security_app, alice):
    """Not in Chainlit's `<app folder>/.files`, which any instance started from the same
    folder deletes when it stops (the next upload of the others then failed with a 500)."""
    await alice.connect()
    file_id = await upload(security_app, alice, "wait.txt", b"waiting", "text/plain")
    waiting = list((security_app.running.tmp / "data" / "uploads").glob(f"*/{alice.session_id}/{file_id}*"))
    assert len(waiting) == 1 and waiting[0].read_bytes() == b"waiting"
    assert not (ROOT / ".files" / alice.session_id).exists()


# ---------------------------------------------------------------------- stored XSS
@pytest.mark.parametrize("declared", ["image/png,text/html", "image/png, text/html"])
async def test_a_page_uploaded_as_an_image_is_stored_as_bytes_and_served_as_a_sandboxed_download(
        security_app, alice, declared):
    element = await attach(security_app, alice, "x.png", PAYLOAD, declared)
    assert element["mime"] == "application/octet-stream"
    assert element["type"] == "file"  # not shown as a picture either
    response = await fetch_blob(security_app, element["url"])
    assert response.status_code == 200 and response.content == PAYLOAD  # the bytes are kept
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.headers["content-disposition"].startswith("attachment;")
    assert response.headers["content-security-policy"] == SANDBOX
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_an_allow_listed_type_is_inline_but_sandboxed(security_app, alice):
    element = await attach(security_app, alice, "real.png", PAYLOAD, "image/png")
    assert element["mime"] == "image/png" and element["type"] == "image"
    response = await fetch_blob(security_app, element["url"])
    assert response.headers["content-type"] == "image/png"
    assert response.headers["content-disposition"].startswith("inline;")
    assert response.headers["content-security-policy"] == SANDBOX
    assert response.headers["x-content-type-options"] == "nosniff"


async def test_chromium_runs_no_script_from_an_uploaded_file(security_app, alice, browser_ready):  # noqa: F811
    from playwright.async_api import Error as PlaywrightError
    from playwright.async_api import async_playwright

    disguised = await attach(security_app, alice, "x.png", PAYLOAD, "image/png,text/html")
    labelled = await attach(security_app, alice, "y.png", PAYLOAD, "image/png", text="another one")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            context = await browser.new_context(accept_downloads=True)
            # Logged in as alice, as the victim would be: a script would read her threads.
            await context.add_cookies([{"name": name, "value": value, "url": security_app.url}
                                       for name, value in alice.cookies.items()])
            page = await context.new_page()
            ran: list[str] = []
            reads: list[str] = []
            page.on("console", lambda message: ran.append(message.text) if message.text.startswith("XSS-RAN") else None)
            page.on("request", lambda request: reads.append(request.url) if "/project/threads" in request.url else None)

            # Control: the attack as it was — same bytes, same type, the app's origin, no headers.
            control = f"{security_app.url}/uploads-xss-control"
            await page.route(control, lambda route: route.fulfill(
                status=200, headers={"content-type": "image/png,text/html"}, body=PAYLOAD))
            await page.goto(control)
            await page.wait_for_timeout(1500)
            assert "XSS-RAN" in ran and reads, "the control did not run: this check could not fail"

            ran.clear()
            reads.clear()
            for element in (disguised, labelled):
                try:
                    await page.goto(urljoin(security_app.url, element["url"]))
                except PlaywrightError as exc:  # an attachment downloads instead of opening
                    assert "Download is starting" in str(exc), exc
                await page.wait_for_timeout(1500)
            assert ran == [] and reads == []
        finally:
            await browser.close()


# ---------------------------------------------------------------------- ownership
async def element_request(app, client, method: str, element: dict, session_id: str):
    async with app.http(client) as http:
        return await http.request(method, "/project/element", json={"element": element, "sessionId": session_id})


async def test_another_user_cannot_delete_or_replace_an_attachment_by_id(security_app, alice, bob):
    element = await attach(security_app, alice, "plan.txt", b"alice's plan", "text/plain")
    thread_id = alice.thread_id
    async with security_app.http(alice) as http:
        shared = await http.put("/project/thread/share", json={"threadId": thread_id, "isShared": True})
    assert shared.status_code == 200, shared.text
    async with security_app.http(bob) as http:  # how bob learns the id: the shared thread shows it
        seen = await http.get(f"/project/share/{thread_id}")
    assert element["id"] in [e["id"] for e in seen.json()["elements"]]

    forged = {"type": "custom", "id": element["id"], "threadId": thread_id, "forId": element.get("forId"),
              "name": "plan.txt", "display": "inline", "props": {"replaced": True}}
    await bob.connect()
    for first_message in (False, True):  # before bob's first message Chainlit queues the delete
        if first_message:
            await bob.send("hello")
        for method in ("DELETE", "PUT"):
            for target in (thread_id, bob.thread_id, None):
                attempt = {**forged, "threadId": target}
                response = await element_request(security_app, bob, method, attempt, bob.session_id)
                assert response.status_code == 404, (method, target, response.status_code, response.text)
                assert response.json()["detail"] == f"element {element['id']} not found"
    assert "may not change element" in full_log(security_app)

    await asyncio.sleep(1)  # anything Chainlit would have done in the background is done by now
    stored = await wait_for_element(security_app, alice, "plan.txt")
    assert stored["objectKey"] == element["objectKey"] and stored["type"] == element["type"]
    assert (await fetch_blob(security_app, stored["url"])).content == b"alice's plan"
    assert not list(security_app.files.glob(f"objects/bob/*/{element['id']}"))

    # The same request from the owner is carried out: the refusals above were about bob.
    response = await element_request(security_app, alice, "DELETE", forged, alice.session_id)
    assert response.status_code == 200 and response.json() == {"success": True}
    deadline = time.monotonic() + 20
    while [e for e in (await thread_of(security_app, alice, thread_id)).json()["elements"]
           if e["id"] == element["id"]]:
        assert time.monotonic() < deadline, "alice's delete was not carried out"
        await asyncio.sleep(0.2)
    assert (await fetch_blob(security_app, stored["url"])).status_code == 404


async def test_a_malformed_element_request_is_a_400(security_app, bob):
    await bob.connect()
    for element in ({"type": "custom", "id": "x" * 300, "name": "n", "display": "inline"},
                    {"type": "custom", "id": str(uuid.uuid4())},
                    {"type": "custom", "id": str(uuid.uuid4()), "name": "n", "display": "inline", "threadId": 5}):
        for method in ("DELETE", "PUT"):
            response = await element_request(security_app, bob, method, element, bob.session_id)
            assert response.status_code == 400, (method, element, response.text)


# ---------------------------------------------------------------------- storage faults
@pytest.mark.parametrize("broken", ["tmp", "meta"])
async def test_an_upload_the_store_cannot_take_is_reported_and_leaves_nothing(security_app, alice, broken):
    """`tmp`: the bytes cannot be written; `meta`: they can, their type cannot (the case
    that used to leave an orphan blob)."""
    await alice.connect()
    await alice.send("first, a plain message")
    folder = security_app.files / broken
    aside = folder.with_name(f"{broken}-aside")
    shutil.move(folder, aside)
    folder.write_text("a file where the store needs a folder")
    try:
        file_id = await upload(security_app, alice, "report.txt", b"quarterly numbers", "text/plain")
        mark = len(alice.events)
        await send_with_files(alice, "here is my report", [file_id])
        notices = await alice.wait_for(lambda: [e.data for e in alice.events[mark:] if e.name == "new_message"
                                                and "was not saved" in str(e.data.get("output"))],
                                       20, "the chat to say the file was not saved")
        await alice.wait_for(lambda: [e for e in alice.events[mark:] if e.name == "remove_element"
                                      and e.data.get("id") == file_id], 20, "the file to leave the message")
    finally:
        folder.unlink()
        shutil.move(aside, folder)
    assert "report.txt" in notices[0]["output"]
    assert "/" not in notices[0]["output"].split("was not saved", 1)[1]  # no server path shown

    await asyncio.sleep(1)
    thread = (await thread_of(security_app, alice, alice.thread_id)).json()
    assert [s["output"] for s in thread["steps"] if s["type"] == "user_message"][-1] == "here is my report"
    assert file_id not in [e["id"] for e in thread["elements"]]
    assert not [p for p in security_app.files.rglob("*") if file_id in str(p)]
    log = full_log(security_app)
    assert (f"attachment 'report.txt' (element {file_id}) of thread {alice.thread_id} by alice was not saved"
            in log)
    assert "Task exception was never retrieved" not in log


async def test_a_thread_whose_blobs_cannot_be_deleted_is_deleted_and_the_blobs_follow(security_app, alice):
    element = await attach(security_app, alice, "keep.txt", b"to be deleted", "text/plain")
    thread_id = alice.thread_id
    blob = security_app.files / "objects" / element["objectKey"]
    assert blob.read_bytes() == b"to be deleted"
    switch = security_app.files / SWITCH
    switch.touch()
    try:
        async with security_app.http(alice) as http:
            deleted = await http.request("DELETE", "/project/thread", json={"threadId": thread_id})
            assert deleted.status_code == 200, deleted.text
            assert (await http.get(f"/project/thread/{thread_id}")).status_code == 404
            again = await http.request("DELETE", "/project/thread", json={"threadId": thread_id})
            assert again.status_code == 404, again.text
        await asyncio.sleep(2.5)  # a first attempt and at least one retry fail meanwhile
        assert blob.exists()
    finally:
        switch.unlink()
    deadline = time.monotonic() + 30
    while blob.exists():
        assert time.monotonic() < deadline, "the blob of the deleted thread was never removed"
        await asyncio.sleep(0.25)
    log = full_log(security_app)
    assert f"blob(s) of thread {thread_id} could not be deleted yet" in log
    assert f"blob(s) of thread {thread_id} deleted after" in log

