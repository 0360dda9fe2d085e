"""Chunks: within their section (a PDF page never shared), overlapping, bounded, deterministic."""

from __future__ import annotations

import pytest

from chat.history import estimate_tokens
from knowledge.chunking import split
from knowledge.extract import Document, Section, extract
from tests.servers.pages import make_pdf

HIDDEN_FACT = "The harbour master's cat is called Admiral Whiskers."


def words(text: str) -> str:
    return " ".join(text.split())


def sentences(n: int, prefix: str = "Sentence") -> str:
    return " ".join(f"{prefix} {i} tells a short story about the sea and the boats in the bay." for i in range(n))


def test_long_pdf_fact_is_cited_with_its_page():
    doc = extract(make_pdf(60, fact_page=37, fact=HIDDEN_FACT), "harbours.pdf", "application/pdf")
    assert doc.pages == 60
    pieces = split(doc)
    hits = [p for p in pieces if "Admiral Whiskers" in p.text]
    assert hits and {p.location for p in hits} == {"page 37"}
    assert {p.location for p in pieces} == {f"page {n}" for n in range(1, 61)}


def test_chunks_never_cross_a_page_and_keep_the_text():
    doc = Document(
        title="t",
        kind="pdf",
        pages=3,
        sections=[Section(sentences(40, "One"), "page 1"), Section("Short page two.", "page 2"), Section(sentences(40, "Three"), "page 3")],
    )
    pieces = split(doc, target_tokens=120, overlap_tokens=20)
    by_location = {s.location: words(s.text) for s in doc.sections}
    for piece in pieces:
        assert words(piece.text) in by_location[piece.location], "a chunk holds text that is not on its page"
    page_one = [p for p in pieces if p.location == "page 1"]
    assert len(page_one) > 1  # a page longer than a chunk gives several chunks, same location
    assert [p.location for p in pieces if p.location == "page 2"] == ["page 2"]
    assert [p.ordinal for p in pieces] == list(range(len(pieces)))


def test_size_bound_and_no_empty_chunks():
    text = "\n\n".join([sentences(3), "x" * 5000, sentences(30), "word " * 900, "   ", "Tail paragraph."])
    pieces = split(Document(title="t", kind="text", sections=[Section(text)]), target_tokens=100, overlap_tokens=30)
    assert pieces
    for piece in pieces:
        assert piece.text.strip()
        assert estimate_tokens(piece.text) <= 100 + 2, f"{estimate_tokens(piece.text)} tokens"
    # Every word of the source is in some chunk (the 5000-character run was cut, not lost).
    joined = "".join(p.text.replace(" ", "").replace("\n", "") for p in pieces)
    assert joined.count("x") >= 5000


def test_consecutive_chunks_of_a_section_overlap():
    doc = Document(title="t", kind="text", sections=[Section(sentences(30))])
    pieces = split(doc, target_tokens=80, overlap_tokens=25)
    assert len(pieces) > 3
    for before, after in zip(pieces, pieces[1:], strict=False):
        last_sentence = before.text.rsplit(". ", 1)[-1]
        assert after.text.startswith(last_sentence), (before.text, after.text)
    without = split(doc, target_tokens=80, overlap_tokens=0)
    assert len(without) < len(pieces)
    assert not without[1].text.startswith(without[0].text.rsplit(". ", 1)[-1])


def test_paragraph_boundaries_are_preferred():
    paragraphs = [f"Paragraph {i} says one thing about tides." for i in range(12)]
    doc = Document(title="t", kind="markdown", sections=[Section("\n\n".join(paragraphs), "section Tides")])
    pieces = split(doc, target_tokens=40, overlap_tokens=0)
    for piece in pieces:
        for part in piece.text.split("\n\n"):
            assert part in paragraphs  # whole paragraphs only: none was cut inside
    assert all(p.location == "section Tides" for p in pieces)


def test_deterministic():
    doc = extract(make_pdf(8, fact_page=5, fact=HIDDEN_FACT), "d.pdf", "application/pdf")
    assert split(doc, target_tokens=60, overlap_tokens=15) == split(doc, target_tokens=60, overlap_tokens=15)


def test_empty_document_and_bad_arguments():
    assert split(Document(title="t", kind="text", sections=[Section("  \n\n ")])) == []
    assert split(Document(title="t", kind="text", sections=[])) == []
    with pytest.raises(ValueError):
        split(Document(title="t", kind="text", sections=[Section("x")]), target_tokens=0)
