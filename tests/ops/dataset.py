"""A small dataset with everything an export must carry, written through the data layer's
public methods as the app writes it, and a full dump of a store read through the public
reads (plus the blob bytes' checksums read from storage) to compare two stores."""

from __future__ import annotations

import hashlib
import uuid
from typing import Any

from chainlit.element import File, Image
from chainlit.types import Feedback
from chainlit.user import User

USERS = {
    "alice": {"role": "admin", "prefs": {"lang": "fr", "sizes": [1, 2, 3]}, "display_name": "Alice Ænema"},
    "bob": {"provider": "credentials"},
    "zoë@example.org": {},
}
TEXTS = ["héllo wörld 🌍", "≠ ∑ ∫ — “quotes” and 'single'", "日本語のテキスト", "multi\nline\ttext", "plain"]


def new_id() -> str:
    return str(uuid.uuid4())


def blob(n: int, size: int = 3000) -> bytes:
    return bytes((i * 7 + n) % 256 for i in range(size))


async def seed(layer, threads_per_user: int = 2) -> dict[str, Any]:
    """Users, threads (names, tags, nested metadata), steps of several types, elements with
    binary blobs (one blob shared by two elements), ratings. Returns the ids written."""
    written: dict[str, Any] = {"threads": [], "steps": [], "elements": []}
    persisted = {}
    for identifier, metadata in USERS.items():
        persisted[identifier] = await layer.create_user(User(identifier=identifier, metadata=dict(metadata)))
    n = 0
    for user in persisted.values():
        for t in range(threads_per_user):
            n += 1
            thread_id = new_id()
            written["threads"].append(thread_id)
            await layer.update_thread(thread_id, name=f"{TEXTS[n % len(TEXTS)]} #{n}", user_id=user.id,
                                      metadata={"mode": "chat", "nested": {"k": [n, {"deep": True}], "s": "ü"}},
                                      tags=["work", f"t{t}"] if t == 0 else None)
            parent = None
            step_ids = []
            for s, kind in enumerate(("user_message", "assistant_message", "tool", "assistant_message")):
                step_id = new_id()
                step = {"id": step_id, "threadId": thread_id, "name": kind.split("_")[0].title(), "type": kind,
                        "streaming": False, "input": TEXTS[(n + s) % len(TEXTS)] if kind == "tool" else "",
                        "output": f"{TEXTS[(n + s + 1) % len(TEXTS)]} {s}",
                        "metadata": {"step": s, "info": {"tokens": [s, s * 2], "model": "m-1"}},
                        "createdAt": f"2026-02-{1 + t % 28:02d}T10:{n // 60:02d}:{n % 60:02d}.{s:06d}Z",
                        "parentId": parent if kind == "tool" else None, "language": "python" if kind == "tool" else None}
                await layer.create_step(step)
                step_ids.append(step_id)
                if kind == "user_message":
                    parent = step_id
            written["steps"] += step_ids
            await layer.flush()
            await layer.upsert_feedback(Feedback(forId=step_ids[1], threadId=thread_id, value=n % 2,
                                                 comment=f"comment {n} ✓" if n % 2 else None))
            elements = [File(name=f"data {n}.bin", content=blob(n), thread_id=thread_id, for_id=step_ids[1],
                             mime="application/octet-stream"),
                        Image(name="picture.png", content=blob(0, 1500), thread_id=thread_id, for_id=step_ids[0],
                              mime="image/png", display="inline", size="medium")]
            for element in elements[: 2 if t == 0 else 1]:
                await layer.create_element(element)
                written["elements"].append(element.id)
            await layer.flush()
    return written


def _clean(data: dict[str, Any], drop: tuple[str, ...] = ()) -> dict[str, Any]:
    return {k: v for k, v in data.items() if v is not None and k not in drop}


async def dump(layer) -> dict[str, Any]:
    """Everything a user sees of the store, by id, plus the activity order and the blob
    bytes' SHA-256 (read from storage)."""
    users = {u["identifier"]: u["metadata"] async for u in layer.iter_users()}
    threads = {}
    async for row in layer.iter_threads():
        thread = await layer.get_thread(row["id"])
        elements = {}
        for element in thread["elements"]:
            data = _clean(element, ("url",))
            if data.get("objectKey"):
                data["bytes"] = hashlib.sha256(await layer.storage.read_file(data["objectKey"])).hexdigest()
            elements[element["id"]] = data
        threads[thread["id"]] = {
            "name": thread.get("name"), "tags": thread.get("tags"), "metadata": thread.get("metadata"),
            "createdAt": thread.get("createdAt"), "updatedAt": row["updatedAt"],
            "owner": thread.get("userIdentifier"),
            "steps": {s["id"]: _clean(s, ("feedback",)) for s in thread["steps"]},
            "feedback": {s["id"]: (s["feedback"]["value"], s["feedback"].get("comment"))
                         for s in thread["steps"] if s.get("feedback")},
            "elements": elements,
        }
    return {"users": users, "threads": threads}
