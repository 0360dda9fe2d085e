"""Knowledge in a conversation, below the browser: the real ChatService, SQLite data layer and
local storage, the embedded knowledge index, embeddings and answers from the
OpenAI-compatible test server, pages from the test page server.

Checked here: a long document is indexed (with its progress step), retrieved and cited
(sources as elements of the answer); a second user never gets the first user's passages;
linked pages are read or refused (with the reason shown and stored); deleting a message
or a thread deletes its chunks and vectors; a resumed thread still knows its documents.
"""

from __future__ import annotations

import uuid

import chainlit as cl
import pytest
from chainlit.element import File

from chat.providers import OpenAIProvider
from chat.service import ChatService
from knowledge.config import load_knowledge_config
from knowledge.embeddings import OpenAIEmbedder
from knowledge.index_sqlite import SQLiteKnowledgeIndex
from knowledge.service import KnowledgeService
from tests.chat.test_chat_service import Chat
from tests.servers.pages import ARTICLE_FACT, ARTICLE_TITLE, PageServer

FACT = "The Quillon reservoir gate is opened with lever number 8817."


def long_document(fact: str = FACT, sections: int = 40) -> str:
    """Markdown far too long for the prompt whole, with one fact in one section."""
    parts = []
    for n in range(sections):
        body = " ".join(f"Routine maintenance paragraph {n}.{i} about pumps, valves and seasonal inspections."
                        for i in range(12))
        if n == 27:
            body += " " + fact
        parts.append(f"# Chapter {n}\n\n{body}\n")
    return "\n".join(parts)


@pytest.fixture(scope="module")
def pages():
    with PageServer() as server:
        yield server


@pytest.fixture
async def knowledge_stack(stack, tmp_path, llm_server, make_config, pages):
    layer, storage, user = stack
    env = {"KNOWLEDGE_LINKS_ALLOWED_HOSTS": pages.authority, "KNOWLEDGE_WHOLE_DOCUMENT_TOKENS": "300"}
    index = SQLiteKnowledgeIndex(f"sqlite:///{tmp_path / 'knowledge.sqlite3'}")
    embedder = OpenAIEmbedder(base_url=llm_server.base_url, api_key="sk-test", model="test-embedding")
    knowledge = KnowledgeService(load_knowledge_config(tmp_path, env), index, embedder)
    await knowledge.start()
    layer.add_derived_store(knowledge)
    config = make_config(LLM_GENERATE_TITLES="false")
    service = ChatService(config, OpenAIProvider(config), storage, layer, knowledge)
    yield service, knowledge, layer, user
    await knowledge.close()


def system_text(request: dict) -> str:
    return "\n".join(m["content"] for m in request["messages"] if m["role"] == "system")


def last_chat(server) -> dict:
    """The last chat-completion request (not an embeddings call)."""
    return [r for r in server.requests if "messages" in r][-1]


async def test_a_long_document_is_indexed_retrieved_and_cited(knowledge_stack, open_chat, llm_server):
    service, knowledge, layer, user = knowledge_stack
    chat = open_chat(service)
    manual = File(name="manual.md", content=long_document().encode(), mime="text/markdown")
    answer = await chat.say("Which lever opens the Quillon reservoir gate?", [manual])

    request = last_chat(llm_server)
    assert FACT in system_text(request)  # the passage went to the model as a source
    assert "Chapter 0 " not in request["messages"][-1]["content"]  # not the whole file
    assert "Sources" in answer.content and "manual.md" in answer.content

    thread = await chat.thread()
    steps = {s["id"]: s for s in thread["steps"]}
    indexing = [s for s in thread["steps"] if s["name"] == "Indexing manual.md"]
    assert indexing and "passages indexed" in indexing[0]["output"]
    sources = [e for e in thread["elements"] if e["forId"] == answer.id]
    assert "Source 1" in {e["name"] for e in sources}
    assert steps[answer.id]["output"].count("Source ") >= 1
    source_texts = [await layer.storage.read_file(e["objectKey"]) for e in sources]
    assert any(FACT.encode() in text for text in source_texts)
    # The generation record says what the model was given.
    context = steps[answer.id]["generation"]["metadata"]["context"]
    assert context["passages"]["included"]

    assert await knowledge.index.count(user_id=user.identifier, thread_id=chat.thread_id) > 5
    assert await knowledge.index.vector_count(user_id=user.identifier) > 5


async def test_another_user_never_retrieves_the_first_users_passages(knowledge_stack, open_chat, llm_server):
    service, knowledge, layer, user = knowledge_stack
    chat = open_chat(service)
    await chat.say("Read this", [File(name="manual.md", content=long_document().encode(), mime="text/markdown")])

    other = await layer.create_user(cl.User(identifier=f"other-{uuid.uuid4().hex[:6]}"))
    intruder = Chat(service, layer, other)
    try:
        intruder.session.chat_settings = {"all_documents": True}  # every thread of *their own*
        answer = await intruder.say("Which lever opens the Quillon reservoir gate? lever number 8817")
    finally:
        intruder.close()
    assert FACT not in system_text(last_chat(llm_server))
    assert "Sources" not in answer.content


async def test_deleting_the_message_or_the_thread_deletes_its_chunks_and_vectors(knowledge_stack, open_chat):
    service, knowledge, layer, user = knowledge_stack
    chat = open_chat(service)
    await chat.say("First", [File(name="a.md", content=long_document().encode(), mime="text/markdown")])
    second = open_chat(service)
    await second.say("Second", [File(name="b.md", content=long_document("Other fact 42.").encode(),
                                      mime="text/markdown")])
    index = knowledge.index
    first_thread = await chat.thread()
    message = next(s for s in first_thread["steps"] if s["type"] == "user_message")
    assert await index.count(thread_id=chat.thread_id) > 0
    with_vectors = await index.vector_count(user_id=user.identifier)

    await layer.delete_step(message["id"])
    await layer.flush()
    assert await index.count(thread_id=chat.thread_id) == 0
    assert 0 < await index.vector_count(user_id=user.identifier) < with_vectors

    await layer.delete_thread(second.thread_id)
    assert await index.count(user_id=user.identifier) == 0
    assert await index.vector_count(user_id=user.identifier) == 0


async def test_linked_pages_are_read_shown_and_stored(knowledge_stack, open_chat, llm_server, pages):
    service, _knowledge, layer, _user = knowledge_stack
    chat = open_chat(service)
    url = pages.url("/article.html")
    await chat.say(f"Summarise {url} please")
    assert ARTICLE_FACT in system_text(last_chat(llm_server))
    thread = await chat.thread()
    reading = next(s for s in thread["steps"] if s["name"] == "Reading links")
    assert ARTICLE_TITLE in reading["output"] and "KB" in reading["output"] and "✓" in reading["output"]
    page_elements = [e for e in thread["elements"] if e["forId"] == reading["id"]]
    assert page_elements and ARTICLE_FACT.encode() in await layer.storage.read_file(page_elements[0]["objectKey"])


async def test_a_refused_link_is_reported_with_its_reason(knowledge_stack, open_chat, llm_server, pages):
    service, _knowledge, _layer, _user = knowledge_stack
    chat = open_chat(service)
    # The allowed host is 127.0.0.1:<port>; this redirect goes to the same server under
    # another address form, which the private-address guard refuses.
    url = pages.url("/redirect-to?url=" + f"http://localhost:{pages.port}/article.html")
    await chat.say(f"What does {url} say?")
    assert ARTICLE_FACT not in system_text(last_chat(llm_server))
    thread = await chat.thread()
    reading = next(s for s in thread["steps"] if s["name"] == "Reading links")
    assert "✗" in reading["output"] and "refused" in reading["output"]


async def test_link_reading_can_be_turned_off_per_thread(knowledge_stack, open_chat, llm_server, pages):
    service, _knowledge, _layer, _user = knowledge_stack
    chat = open_chat(service)
    chat.session.chat_settings = {"read_links": False}
    pages.reset()
    await chat.say(f"Look at {pages.url('/article.html')}")
    assert pages.paths() == []
    assert ARTICLE_FACT not in system_text(last_chat(llm_server))


async def test_a_resumed_thread_retrieves_from_its_documents(knowledge_stack, open_chat, llm_server):
    service, _knowledge, _layer, _user = knowledge_stack
    chat = open_chat(service)
    await chat.say("Keep this", [File(name="manual.md", content=long_document().encode(), mime="text/markdown")])
    thread = await chat.thread()
    state = await service.state_for(thread)
    user_turn = next(t for t in state.turns if t.role == "user")
    assert "It is indexed" in user_turn.content and "Chapter 0" not in user_turn.content
    await chat.say("And which lever was it for the Quillon gate?")
    assert FACT in system_text(last_chat(llm_server))


async def test_an_unreachable_index_lets_the_chat_go_on_and_deletes_wait_for_it(stack, open_chat, make_config,
                                                                               llm_server, tmp_path, caplog):
    from knowledge.index_postgres import PostgresKnowledgeIndex
    from tests.e2e.app_runner import free_port

    layer, storage, _user = stack
    index = PostgresKnowledgeIndex(f"postgresql://postgres@127.0.0.1:{free_port()}/nothing")
    knowledge = KnowledgeService(load_knowledge_config(tmp_path, {"KNOWLEDGE_WHOLE_DOCUMENT_TOKENS": "100"}), index)
    config = make_config(LLM_GENERATE_TITLES="false")
    chat = open_chat(ChatService(config, OpenAIProvider(config), storage, layer, knowledge))
    answer = await chat.say("Read this", [File(name="manual.md", content=long_document().encode(), mime="text/markdown")])
    assert not answer.is_error
    assert "Chapter 0" in last_chat(llm_server)["messages"][-1]["content"]  # given whole, as far as it fits
    assert any("could not be started" in r.getMessage() and r.levelname == "ERROR" for r in caplog.records)
    with pytest.raises(ConnectionError, match="unavailable"):
        await knowledge.forget(thread_id=chat.thread_id)
    await knowledge.close()


def document_of_kind(kind: str, fact: str) -> tuple[str, str, bytes, str]:
    """(file name, MIME type, bytes, where the fact is) of a long document of that kind."""
    filler = [f"Paragraph {n}: the depot inventory lists crates, pallets and seasonal stock counts." for n in range(30)]
    if kind == "txt":
        text = "\n\n".join(filler[:20] + [fact] + filler) * 3
        return "notes.txt", "text/plain", text.encode(), ""
    if kind == "md":
        body = "\n\n".join(f"# Part {n}\n\n" + " ".join(filler) + (f" {fact}" if n == 6 else "") for n in range(10))
        return "notes.md", "text/markdown", body.encode(), "section Part 6"
    if kind == "html":
        body = "".join(f"<h2>Part {n}</h2><p>{' '.join(filler)}{' ' + fact if n == 6 else ''}</p>" for n in range(10))
        html = f"<html><head><title>Depot notes</title></head><body><article>{body}</article></body></html>"
        return "notes.html", "text/html", html.encode(), "Part 6"
    if kind == "pdf":
        from fpdf import FPDF

        pdf = FPDF()
        pdf.set_font("Helvetica", size=10)
        for page in range(1, 21):
            pdf.add_page()
            pdf.multi_cell(0, 5, " ".join(filler[:12]) + (f" {fact}" if page == 13 else ""))
        return "notes.pdf", "application/pdf", bytes(pdf.output()), "page 13"
    import io

    import docx

    document = docx.Document()
    for n in range(10):
        document.add_heading(f"Part {n}", level=1)
        document.add_paragraph(" ".join(filler) + (f" {fact}" if n == 6 else ""))
    out = io.BytesIO()
    document.save(out)
    return ("notes.docx", "application/vnd.openxmlformats-officedocument.wordprocessingml.document", out.getvalue(),
            "Part 6")


@pytest.mark.parametrize("kind", ["txt", "md", "html", "pdf", "docx"])
async def test_each_document_type_is_indexed_retrieved_and_cited_with_its_place(knowledge_stack, open_chat, kind,
                                                                               llm_server):
    service, knowledge, _layer, user = knowledge_stack
    fact = "The Zephyrine depot keeps spare rotor blades in bay 5521."
    name, mime, data, where = document_of_kind(kind, fact)
    chat = open_chat(service)
    answer = await chat.say("Where does the Zephyrine depot keep spare rotor blades?", [File(name=name, content=data,
                                                                                                 mime=mime)])
    assert fact in system_text(last_chat(llm_server))
    assert await knowledge.index.count(user_id=user.identifier, thread_id=chat.thread_id) > 1  # indexed, not whole
    cited = [line for line in answer.content.split("; ") if name in line]
    assert cited, answer.content
    assert any(where in line for line in cited), answer.content


def test_a_page_address_cannot_add_a_link_of_its_own_to_the_list_of_pages_read():
    """The address (the user's, or a redirect the page chose) goes into a Markdown link
    target: what would end it or start another link is percent-encoded."""
    import re

    from knowledge.service import _md_url

    line = f"[Title]({_md_url('http://example.test/a)[Sign in](http://evil.test/login) x')})"
    assert re.findall(r"\]\(([^)]*)\)", line) == ["http://example.test/a%29%5BSign%20in%5D%28http://evil.test/login%29%20x"]
    assert _md_url("https://example.test/path?q=1#frag") == "https://example.test/path?q=1#frag"
