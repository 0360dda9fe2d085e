"""Which attachments reach the model as text."""

from __future__ import annotations

import pytest

from chat.files import describe_attachment, is_text_like


@pytest.mark.parametrize(
    "name,mime,expected",
    [
        ("notes.txt", "text/plain", True),
        ("data.csv", None, True),
        ("config.yaml", "application/octet-stream", True),
        ("main.py", "text/x-python", True),
        ("payload.json", "application/json", True),
        ("feed.atom", "application/atom+xml", True),
        ("Makefile", None, True),
        ("photo.png", "image/png", False),
        ("report.pdf", "application/pdf", False),
        ("blob", None, False),
    ],
)
def test_is_text_like(name, mime, expected):
    assert is_text_like(name, mime) is expected


def test_text_file_content_is_given_to_the_model():
    block = describe_attachment("notes.txt", "text/plain", "línea uno\nline two".encode(), 1000)
    assert block == "--- Attached file: notes.txt ---\nlínea uno\nline two\n--- End of notes.txt ---"


def test_long_text_is_cut_and_says_so():
    block = describe_attachment("big.log", "text/plain", b"a" * 50, 10)
    assert "a" * 10 + "\n[... file truncated to its first 10 characters ...]" in block
    assert "a" * 11 not in block


def test_binary_files_are_named_not_dumped():
    block = describe_attachment("photo.png", "image/png", b"\x89PNG\r\n\x1a\n\x00\x00", 1000)
    assert block == "[Attached file: photo.png (image/png, 10 bytes); its content is not text and is not shown.]"
    # A "text" name with binary bytes is not decoded either.
    assert "not text" in describe_attachment("x.txt", "text/plain", b"ab\x00cd", 1000)


def test_each_instance_keeps_its_uploads_in_a_folder_of_its_own(tmp_path, monkeypatch):
    import os
    import time

    import chainlit.config
    import chainlit.server

    from chat.files import STALE_UPLOADS_SECONDS, keep_uploads_in

    monkeypatch.setattr(chainlit.config, "FILES_DIRECTORY", chainlit.config.FILES_DIRECTORY)
    monkeypatch.setattr(chainlit.server, "FILES_DIRECTORY", chainlit.server.FILES_DIRECTORY)
    crashed = tmp_path / "uploads" / "123-dead"
    (crashed / "session").mkdir(parents=True)
    old = time.time() - STALE_UPLOADS_SECONDS - 60
    os.utime(crashed, (old, old))
    running = tmp_path / "uploads" / "456-alive"
    running.mkdir()

    own = keep_uploads_in(tmp_path / "uploads")
    assert chainlit.config.FILES_DIRECTORY == own == chainlit.server.FILES_DIRECTORY
    assert own.parent == tmp_path / "uploads" and own.name.startswith(f"{os.getpid()}-")
    assert (own.stat().st_mode & 0o777) == 0o700
    assert not crashed.exists() and running.exists()  # another instance's recent folder is kept
    assert keep_uploads_in(tmp_path / "uploads") != own  # never shared, even within one host
