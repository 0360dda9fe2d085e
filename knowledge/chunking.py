"""Overlapping passages of a document, each with the place it came from.

Chunks follow the document's sections (a PDF page, a heading's section) and never cross one,
so a passage cited as "page 37" is on page 37. Inside a section, text is cut at paragraph
boundaries where possible, else at sentence ends, else between words; consecutive chunks of a
section share about `overlap_tokens` of text so a fact split by a cut is whole in one of them.
The same document always gives the same chunks (chunk ids are built from their ordinals).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from chat.history import estimate_tokens

from .extract import Document

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
# A sentence ends at . ! ? (optionally closed by quotes or brackets) followed by whitespace.
_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'”’)\]]*\s+")


@dataclass(frozen=True)
class Piece:
    text: str
    location: str
    ordinal: int


@dataclass(frozen=True)
class _Unit:
    text: str
    tokens: int
    new_paragraph: bool  # joined to the previous unit with a blank line, else a space


def split(document: Document, *, target_tokens: int = 350, overlap_tokens: int = 60) -> list[Piece]:
    """The document's chunks of about `target_tokens` each, in order, numbered from 0."""
    if target_tokens < 1:
        raise ValueError("target_tokens must be at least 1")
    overlap_tokens = max(0, min(overlap_tokens, target_tokens // 2))
    pieces: list[Piece] = []
    for section in document.sections:
        for text in _pack(_units(section.text, target_tokens), target_tokens, overlap_tokens):
            pieces.append(Piece(text=text, location=section.location, ordinal=len(pieces)))
    return pieces


def _units(text: str, target: int) -> list[_Unit]:
    """The section's text as paragraphs, or sentences / word runs of the paragraphs too long."""
    units: list[_Unit] = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        paragraph = paragraph.strip()
        if not paragraph:
            continue
        tokens = estimate_tokens(paragraph)
        if tokens <= target:
            units.append(_Unit(paragraph, tokens, True))
            continue
        first = True
        for sentence in _SENTENCE_END.split(paragraph):
            sentence = sentence.strip()
            if not sentence:
                continue
            for part in _words(sentence, target):
                units.append(_Unit(part, estimate_tokens(part), first))
                first = False
    return units


def _words(sentence: str, target: int) -> list[str]:
    """A sentence cut between words into runs of at most `target` tokens (a word longer than
    that is cut inside, the only way left)."""
    if estimate_tokens(sentence) <= target:
        return [sentence]
    runs: list[str] = []
    current: list[str] = []
    size = 0
    for word in sentence.split():
        cost = estimate_tokens(word) + (1 if current else 0)
        if current and size + cost > target:
            runs.append(" ".join(current))
            current, size = [], 0
            cost = estimate_tokens(word)
        while cost > target:  # one huge "word" (a URL, base64): cut it by characters
            cut = _prefix_fitting(word, target)
            runs.append(word[:cut])
            word = word[cut:]
            cost = estimate_tokens(word)
        if word:
            current.append(word)
            size += cost
    if current:
        runs.append(" ".join(current))
    return runs


def _prefix_fitting(word: str, target: int) -> int:
    low, high = 1, len(word)
    while low < high:  # the longest prefix whose estimate fits
        middle = (low + high + 1) // 2
        if estimate_tokens(word[:middle]) <= target:
            low = middle
        else:
            high = middle - 1
    return low


def _join(units: list[_Unit]) -> str:
    out: list[str] = []
    for i, unit in enumerate(units):
        if i:
            out.append("\n\n" if unit.new_paragraph else " ")
        out.append(unit.text)
    return "".join(out)


def _cost(units: list[_Unit]) -> int:
    # Separators are about one token each; counting them keeps chunks at or under target.
    return sum(u.tokens for u in units) + max(0, len(units) - 1)


def _pack(units: list[_Unit], target: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current: list[_Unit] = []
    fresh = 0  # units in `current` not carried over from the previous chunk
    for unit in units:
        if current and _cost(current) + 1 + unit.tokens > target:
            chunks.append(_join(current))
            current = _tail(current, overlap, target - unit.tokens - 1)
            fresh = 0
        current.append(unit)
        fresh += 1
    if current and fresh:
        chunks.append(_join(current))
    return [c for c in chunks if c.strip()]


def _tail(units: list[_Unit], overlap: int, room: int) -> list[_Unit]:
    """The last units of a chunk, at most `overlap` tokens (and what fits beside the next unit),
    carried into the next chunk; the last unit's final words when even it is too long."""
    budget = min(overlap, room)
    if budget <= 0:
        return []
    carried: list[_Unit] = []
    for unit in reversed(units):
        if _cost([unit, *carried]) > budget:
            break
        carried.insert(0, unit)
    if carried:
        return carried
    words: list[str] = []
    for word in reversed(units[-1].text.split()):
        if estimate_tokens(" ".join([word, *words])) > budget:
            break
        words.insert(0, word)
    if not words:
        return []
    text = " ".join(words)
    return [_Unit(text, estimate_tokens(text), units[-1].new_paragraph)]
