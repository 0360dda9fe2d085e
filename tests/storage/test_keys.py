"""Object key validation and the per-user/thread/element layout."""

import unicodedata

import pytest

from storage import InvalidObjectKey, element_object_key, validate_object_key
from storage.base import MAX_KEY_BYTES


@pytest.mark.parametrize(
    "key",
    [
        "a",
        "user/thread/element/file.txt",
        "user/thread/element/.hidden",
        "user/thread/element/...",  # three dots is a name, not a parent reference
        "user/thread/element/a..b",
        "用户/线程/元素/文件.txt",
        "user/t/e/emoji 📎 name.png",
        "k/" + "x" * (MAX_KEY_BYTES - 2),
    ],
)
def test_valid_keys_are_returned(key):
    assert validate_object_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        "",
        "/abs",
        "a/../b",
        "..",
        ".",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "a\x00b",
        "a\tb",
        "a\x1bb",
        "a\x7fb",
        "a\x85b",  # C1 control (NEL)
        "k/" + "x" * (MAX_KEY_BYTES - 1),
        "k/" + "é" * (MAX_KEY_BYTES // 2),  # 1024 characters' worth of bytes but 2-byte chars
    ],
)
def test_invalid_keys_raise_value_error(key):
    with pytest.raises(InvalidObjectKey) as info:
        validate_object_key(key)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [None, 42, b"bytes/key"])
def test_non_string_keys_refused(value):
    with pytest.raises(InvalidObjectKey):
        validate_object_key(value)


def test_keys_are_normalised_to_nfc():
    decomposed = unicodedata.normalize("NFD", "user/t/e/café.txt")
    assert decomposed != "user/t/e/café.txt"
    assert validate_object_key(decomposed) == "user/t/e/café.txt"


def test_element_key_layout_groups_by_user_and_thread():
    key = element_object_key("alice@example.com", "thread-1", "el-9", "report.pdf")
    assert key == "alice@example.com/thread-1/el-9/report.pdf"
    assert key.startswith("alice@example.com/thread-1/")


@pytest.mark.parametrize(
    "user, thread, element, name",
    [
        ("../../etc", "t", "e", "passwd"),
        ("u", "..", "e", "f"),
        ("u", "t", "e", "../../x"),
        ("a/b", "t\\x", "e\n", "n\x00ame"),
        ("u", "t", "e", ""),
        ("u", "t", "e", "  "),
        ("u", "t", "e", "."),
    ],
)
def test_element_key_neutralises_hostile_parts(user, thread, element, name):
    key = element_object_key(user, thread, element, name)
    assert validate_object_key(key) == key
    segments = key.split("/")
    assert len(segments) == 4, key
    assert all(seg not in ("", ".", "..") for seg in segments)


def test_element_key_defaults_for_missing_user_and_name():
    assert element_object_key(None, "t", "e", None) == "anonymous/t/e/file"


def test_element_key_keeps_unicode_name():
    assert element_object_key("u", "t", "e", "naïve café 📎.txt").endswith("/naïve café 📎.txt")


def test_element_key_of_huge_name_stays_within_limit():
    key = element_object_key("u" * 500, "t" * 500, "e" * 500, "n" * 5000)
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES
    assert validate_object_key(key) == key


def test_element_key_of_huge_multibyte_parts_stays_within_limit():
    # 200 characters of a 4-byte character is 800 bytes per segment: four of them overflow.
    key = element_object_key("😀" * 300, "😀" * 300, "😀" * 300, "😀" * 300)
    assert len(key.encode("utf-8")) <= MAX_KEY_BYTES


def test_element_key_truncation_keeps_the_extension():
    key = element_object_key("u", "t", "e", "é" * 300 + ".pdf")
    name = key.rsplit("/", 1)[-1]
    assert name.endswith(".pdf")
    assert len(name.encode("utf-8")) <= 200
