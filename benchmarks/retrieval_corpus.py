"""The retrieval benchmark's corpus: invented municipal reports, generated from a seed.

Every page is a section of plausible report prose (departments, assets, places, figures) made
from the word lists below, so the corpus ships as code and is the same on every machine. Some
pages carry one hidden fact, each with a labelled question:

* paraphrased facts: the question shares almost no word with the fact but the place's name
  ("The Meridian vault opens with code 4471." / "Which number unlocks the Meridian
  strongroom?"), and the place names also fill ordinary pages, so words alone barely find
  them: vector search matters;
* lexical facts: a rare code or name ("Permit QX-4471-KB was issued to Ilsa Vorbrand …" /
  "Who was issued permit QX-4471-KB?"), next to distractor pages with codes of the same
  prefixes: words find them, meaning barely does.

The same fact template also appears with other places, so meaning alone confuses them.
"""

from __future__ import annotations

import random
import textwrap
from dataclasses import dataclass

DEPARTMENTS = [
    "highways", "parks", "water services", "housing", "planning", "finance", "libraries", "transport",
    "waste management", "public health", "education", "emergency planning", "estates", "culture",
    "environmental health", "procurement", "digital services", "coastal protection", "licensing", "social care",
]
ASSETS = [
    "pumping station", "culvert", "footbridge", "depot", "reservoir", "substation", "car park", "sports hall",
    "tram stop", "sea wall", "retaining wall", "bus shelter", "community centre", "allotment", "boiler house",
    "storm drain", "cycle lane", "pedestrian crossing", "water main", "street lighting column", "playground",
    "recycling centre", "cemetery chapel", "market hall", "swimming pool", "leisure centre", "harbour crane",
]
TOPICS = [
    "drainage capacity", "staff rotas", "contract renewals", "energy use", "visitor numbers", "maintenance backlog",
    "insurance premiums", "safety inspections", "tenant complaints", "noise monitoring", "traffic counts",
    "grant funding", "carbon targets", "accessibility audits", "winter gritting", "flood resilience",
    "software licences", "vehicle fleet", "asbestos surveys", "tree surveys",
]
#: Places of the paraphrased facts; they also fill ordinary pages as distractors.
FACT_PLACES = [
    "Meridian", "Corvale", "Ashgrove", "Tarnwick", "Bellmoor", "Kestrel Point", "Oakhollow", "Wrenfield",
    "Saltmarsh", "Greystone", "Harrowgate", "Linden Vale", "Marlow Cross", "Northbrook", "Pennyfold",
    "Quarry Hill", "Ravensholme", "Stonebridge", "Thornbury", "Westmere",
]
OTHER_PLACES = [
    "Elmstead", "Fairhaven", "Gildersome", "Hollins", "Ivybridge", "Juniper Green", "Kingsmead", "Lowther",
    "Millbrook", "Newhall", "Orchard End", "Pikestone", "Rushden", "Sandford", "Upperton", "Yarrow",
]
ADJECTIVES = [
    "steady", "slower than planned", "encouraging", "mixed", "uneven", "satisfactory", "limited", "notable",
    "gradual", "modest", "strong", "disappointing",
]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]
HEADINGS = ["Overview", "Operations", "Maintenance", "Finance", "Risks", "Outlook", "Staffing", "Projects",
            "Performance", "Consultation", "Compliance", "Assets"]
SYLLABLES = ["vor", "brand", "kel", "dris", "ma", "tov", "quin", "zel", "har", "bek", "lo", "sund", "pra",
             "vik", "ost", "wen", "dar", "ry", "mok", "tha", "jun", "cor", "fen", "gri"]
CHEMICALS = ["chloramine", "bromate", "nitrite", "cadmium", "legionella", "toluene", "arsenic", "manganese",
             "trihalomethane", "cryptosporidium", "glyphosate", "benzene", "perchlorate", "antimony"]
CODE_PREFIXES = ["QX", "ZT", "KV", "JR", "WM", "PL"]

FILLER = [
    "The {dept} team reviewed the {asset} programme for {place} and reported {adj} progress on {topic}.",
    "Officers from {dept} met residents of {place} to discuss {topic} and the future of the {asset}.",
    "Spending on the {asset} at {place} reached {money} thousand pounds against a budget of {money2} thousand.",
    "A survey of the {place} {asset} found {adj} results, and {dept} will repeat it in {month}.",
    "Work on {topic} continued across {place}, with the {asset} scheduled for inspection in {month}.",
    "The committee asked {dept} for a short paper on {topic} before the {month} meeting.",
    "{count} requests about the {asset} in {place} were logged this quarter, most of them about {topic}.",
    "Contractors completed the first phase at the {place} {asset} and the second phase starts in {month}.",
    "Progress on {topic} was {adj}; the {dept} service expects to close the remaining actions by {month}.",
    "The {asset} in {place} remained open throughout the period despite {adj} demand.",
    "An internal audit of {topic} in {dept} raised {count} recommendations, all accepted by managers.",
    "Residents near the {place} {asset} reported {adj} improvements after the works on {topic}.",
]
#: Distractors for the lexical facts: the same kinds of codes, other numbers, no answer.
CODE_FILLER = [
    "Permit {code} for the {place} {asset} was renewed without changes.",
    "Invoice {code} was queried by {dept} and is awaiting a credit note.",
    "Sample {code} from the {place} {asset} met every standard tested.",
    "Contract {code} for {topic} was extended by {count} months.",
]


@dataclass(frozen=True)
class Template:
    fact: str
    question: str
    answer: str  # a field of the fact: the value the question asks for


PARAPHRASED = [
    Template("The {place} vault opens with code {n4}.", "Which number unlocks the {place} strongroom?", "{n4}"),
    Template("Staff at the {place} depot must evacuate when the river gauge passes {n1} metres.",
             "At what water height do employees have to leave the {place} warehouse?", "{n1} metres"),
    Template("The {place} laboratory bought {n2} new microscopes this spring.",
             "How many magnifying instruments did the {place} lab acquire?", "{n2}"),
    Template("{person} chairs the audit panel of the {place} trust.",
             "Who leads the group that checks the accounts of the {place} trust?", "{person}"),
    Template("The {place} canteen serves lunch from {hour} o'clock.",
             "When does the {place} cafeteria begin offering the midday meal?", "{hour} o'clock"),
    Template("The roof of the {place} archive leaked after the storm in {month}.",
             "In which month did rain get into the {place} records building?", "{month}"),
    Template("The {place} ferry was withdrawn because its engine failed {n2} times.",
             "How often did the motor of the {place} boat break down before it was taken out of service?", "{n2}"),
    Template("Volunteers planted {n3} oak trees along the {place} embankment.",
             "How many saplings did helpers put in the ground by the {place} riverbank?", "{n3}"),
    Template("The {place} clinic hired {n2} additional nurses to shorten waiting times.",
             "How many extra medical staff did the {place} health centre recruit to reduce queues?", "{n2}"),
    Template("The {place} bridge is closed to lorries heavier than {n2} tonnes.",
             "What weight limit keeps heavy trucks from crossing at {place}?", "{n2} tonnes"),
    Template("A fire alarm fault at the {place} school sent {n3} pupils home early.",
             "How many children left the {place} academy ahead of time because of a broken smoke detector?", "{n3}"),
    Template("The {place} museum received a donation of {n2} antique clocks.",
             "How many old timepieces were given to the {place} gallery?", "{n2}"),
]
LEXICAL = [
    Template("Permit {code} was issued to {person} for work on the {other} {asset}.",
             "Who was issued permit {code}?", "{person}"),
    Template("Invoice {code} from {company} covered the {asset} repairs in {other}.",
             "Which supplier sent invoice {code}?", "{company}"),
    Template("Sample {code} from the {other} {asset} tested positive for {chemical}.",
             "What did sample {code} test positive for?", "{chemical}"),
    Template("Contract {code} was signed by {person} on behalf of the {dept} service.",
             "Who signed contract {code}?", "{person}"),
]


@dataclass(frozen=True)
class Fact:
    document: int  # 0-based document number
    page: int  # 1-based page number
    kind: str  # "paraphrased" or "lexical"
    sentence: str
    question: str
    answer: str


@dataclass
class Corpus:
    documents: list[tuple[str, list[str]]]  # (title, page texts)
    facts: list[Fact]

    @property
    def pages(self) -> int:
        return sum(len(pages) for _, pages in self.documents)


class _Names:
    """Rare, unique person and company names from syllables."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()
        self.longer = 0  # extra syllables per word, once the short names are used up

    def _word(self) -> str:
        syllables = self.rng.randint(2, 3) + self.longer
        return "".join(self.rng.choice(SYLLABLES) for _ in range(syllables)).capitalize()

    def person(self) -> str:
        return self._unique(lambda: f"{self._word()} {self._word()}")

    def company(self) -> str:
        return self._unique(lambda: f"{self._word()} {self.rng.choice(['Ltd', 'Supplies', 'Engineering', 'Partners'])}")

    def code(self) -> str:
        rng = self.rng
        letters = "".join(rng.choice("ABCDEFGHJKLMNPRSTUVWXYZ") for _ in range(2))
        return self._unique(lambda: f"{rng.choice(CODE_PREFIXES)}-{rng.randint(1000, 9999)}-{letters}")

    def _unique(self, make) -> str:
        # A large corpus uses up the short names (about 57,000 companies): after many
        # collisions in a row, words get a syllable longer (else this loop never ended).
        misses = 0
        while True:
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value
            misses += 1
            if misses % 200 == 0:
                self.longer += 1


def _values(rng: random.Random, names: _Names, place: str) -> dict[str, str]:
    return {
        "place": place,
        "other": rng.choice(OTHER_PLACES),
        "asset": rng.choice(ASSETS),
        "dept": rng.choice(DEPARTMENTS),
        "topic": rng.choice(TOPICS),
        "adj": rng.choice(ADJECTIVES),
        "month": rng.choice(MONTHS),
        "money": str(rng.randint(20, 900)),
        "money2": str(rng.randint(20, 900)),
        "count": str(rng.randint(3, 60)),
        "n1": f"{rng.randint(2, 9)}.{rng.randint(1, 9)}",
        "n2": str(rng.randint(11, 97)),
        "n3": str(rng.randint(120, 980)),
        "n4": str(rng.randint(1000, 9999)),
        "hour": str(rng.choice([11, 12, 1])),
        "person": names.person(),
        "company": names.company(),
        "chemical": rng.choice(CHEMICALS),
        "code": names.code(),
    }


def _sentence(rng: random.Random, names: _Names, templates: list[str]) -> str:
    place = rng.choice(FACT_PLACES + OTHER_PLACES)
    text = rng.choice(templates).format(**_values(rng, names, place))
    return text[0].upper() + text[1:]


def _paragraph(rng: random.Random, names: _Names, sentences: int) -> str:
    parts = []
    for _ in range(sentences):
        parts.append(_sentence(rng, names, CODE_FILLER if rng.random() < 0.12 else FILLER))
    return " ".join(parts)


def generate(pages: int = 1000, pages_per_document: int = 100, facts: int | None = None, seed: int = 7) -> Corpus:
    """`pages` pages in documents of `pages_per_document`; `facts` hidden facts (default: about
    one page in four, half paraphrased, half lexical), at distinct pages."""
    rng = random.Random(seed)
    names = _Names(rng)
    n_docs = max(1, -(-pages // pages_per_document))
    sizes = [pages // n_docs + (1 if i < pages % n_docs else 0) for i in range(n_docs)]
    n_facts = facts if facts is not None else max(2, round(pages * 0.24))
    slots = [(d, p) for d, size in enumerate(sizes) for p in range(1, size + 1)]
    if n_facts > len(slots):
        raise ValueError(f"{n_facts} facts need as many pages; the corpus has {len(slots)}")
    placed = sorted(rng.sample(slots, n_facts))
    combos = [(t, place) for t in PARAPHRASED for place in FACT_PLACES]
    rng.shuffle(combos)

    fact_at: dict[tuple[int, int], Fact] = {}
    for number, (doc, page) in enumerate(placed):
        if number % 2 == 0:
            template, place = combos[(number // 2) % len(combos)]
            kind = "paraphrased"
        else:
            template, place = rng.choice(LEXICAL), rng.choice(FACT_PLACES)
            kind = "lexical"
        values = _values(rng, names, place)
        fact_at[(doc, page)] = Fact(doc, page, kind, template.fact.format(**values), template.question.format(**values),
                                    template.answer.format(**values))

    documents: list[tuple[str, list[str]]] = []
    for doc, size in enumerate(sizes):
        department = DEPARTMENTS[doc % len(DEPARTMENTS)]
        title = f"Annual {department} report, volume {doc + 1}"
        texts = []
        for page in range(1, size + 1):
            heading = f"{page}. {rng.choice(HEADINGS)}: {rng.choice(TOPICS)} in {rng.choice(FACT_PLACES + OTHER_PLACES)}"
            paragraphs = [_paragraph(rng, names, rng.randint(3, 4)) for _ in range(2)]
            fact = fact_at.get((doc, page))
            if fact is not None:
                # Inside a paragraph, at a random sentence boundary: not always first or last.
                where = rng.randrange(2)
                sentences = paragraphs[where].split(". ")
                cut = rng.randint(0, len(sentences))
                joined = ". ".join(sentences[:cut])
                before = joined + ("." if joined and not joined.endswith(".") else "")
                rest = ". ".join(sentences[cut:])
                paragraphs[where] = " ".join(part for part in (before, fact.sentence, rest) if part)
            texts.append("\n\n".join([title, heading, *paragraphs]))
        documents.append((title, texts))
    return Corpus(documents, [fact_at[slot] for slot in placed])


def to_pdf(title: str, pages: list[str]) -> bytes:
    """The document as a PDF with one page per text (fpdf2, core Helvetica: ASCII text). Lines
    are wrapped here and placed with `text()`: `multi_cell` measures every word and takes
    seventy times as long, which would dominate the benchmark's set-up."""
    from fpdf import FPDF

    pdf = FPDF(format="A4")
    pdf.set_title(title)
    pdf.set_auto_page_break(False)
    pdf.set_font("Helvetica", size=10)
    for text in pages:
        pdf.add_page()
        y = 20.0
        for block in text.split("\n\n"):
            for line in textwrap.wrap(block, 95):
                pdf.text(15, y, line)
                y += 5
            y += 2
    return bytes(pdf.output())
