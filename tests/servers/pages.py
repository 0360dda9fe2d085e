"""A web server of test pages for the link reader, on a free loopback port.

It runs in a background thread (so it serves a `chainlit run` subprocess as well as in-process
clients) and counts what it did, so tests can assert on the server's side: which paths were
asked for (with their Host header), how many requests were in flight at once (per `group`
query parameter, so a request left hanging by an earlier test does not count), and how many
bytes of the huge page went out before the client hung up.

    /article.html          an article with nav/footer boilerplate and a known fact (ARTICLE_FACT)
    /doc.pdf               a PDF of PDF_PAGES pages, "Page N" and PDF_FACT on the last one
    /plain.txt             plain text (UTF-8)
    /redirect-local        302 to http://127.0.0.1:<port>/article.html
    /redirect-chain/N      302 to /redirect-chain/N-1, and /redirect-chain/0 to /article.html
    /redirect-to?url=U     302 to U
    /gzip.html             the article, gzip-compressed (sent although the client asks for identity)
    /gzip-bomb.html        HUGE_BYTES of zeros, gzip-compressed to about 50 KB
    /huge.html             HUGE_BYTES of HTML, chunked, made on the fly (never in memory)
    /slow.html?delay=S     waits S seconds (default 30) before answering an article
    /image.png             an image (a type the reader refuses)
    /notfound              404

    with PageServer() as pages:          # PageServer(tls=context) serves https
        pages.url("/article.html")
"""

from __future__ import annotations

import gzip
import socket
import ssl
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ARTICLE_TITLE = "The Otter Report"
ARTICLE_FACT = "Sea otters in Monterey Bay eat about 25 percent of their body weight every day."
BOILERPLATE = "Subscribe to our newsletter for weekly deals"
PDF_PAGES = 3
PDF_FACT = "The lighthouse keeper logged 412 ships in 1923."
PLAIN_TEXT = "Plain notes: the café opens at 7 o'clock.\n\nSecond paragraph of the notes.\n"
HUGE_BYTES = 50 * 1024 * 1024
HUGE_CHUNK = 64 * 1024

ARTICLE_HTML = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{ARTICLE_TITLE} | Example News</title></head>
<body>
<header><nav><a href="/">Home</a> <a href="/world">World</a> <a href="/subscribe">{BOILERPLATE}</a></nav></header>
<main><article>
<h1>{ARTICLE_TITLE}</h1>
<p>Sea otters are marine mammals native to the coasts of the northern and eastern North Pacific Ocean.
They are among the smallest marine mammals and the heaviest members of the weasel family.</p>
<h2>Diet</h2>
<p>{ARTICLE_FACT} Their appetite keeps them warm in cold water, since they lack blubber.</p>
<p>They use rocks as tools to break open shellfish, a behaviour that researchers have documented for decades.</p>
<h2>Habitat</h2>
<p>Otters live in kelp forests, where they wrap themselves in kelp to avoid drifting away while they sleep.</p>
</article></main>
<footer><p>Copyright 2026 Example News. All rights reserved. Privacy policy. Cookie settings.</p></footer>
</body></html>
"""

# A 1x1 PNG.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
)


def make_pdf(pages: int, fact_page: int | None = None, fact: str = PDF_FACT) -> bytes:
    """A PDF with `pages` pages of filler text ("Page N ..."), `fact` on `fact_page`."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(f"A document of {pages} pages")
    pdf.set_font("Helvetica", size=11)
    for number in range(1, pages + 1):
        pdf.add_page()
        filler = f"Page {number}. This page describes harbour number {number} and its tides in some detail."
        pdf.multi_cell(0, 6, filler, new_x="LMARGIN", new_y="NEXT")
        if number == fact_page:
            pdf.multi_cell(0, 6, fact, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def _zeros_gzip(size: int) -> bytes:
    """`size` zero bytes, gzip-compressed (about a thousandth of the size), built a MB at a time."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header and trailer
    block = b"\0" * (1 << 20)
    parts = [compressor.compress(block) for _ in range(size // len(block))]
    parts.append(compressor.flush())
    return b"".join(parts)


class _Server(ThreadingHTTPServer):
    request_queue_size = 64
    daemon_threads = True


class PageServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0, tls: ssl.SSLContext | None = None):
        self.scheme = "https" if tls else "http"
        self.pdf = make_pdf(PDF_PAGES, fact_page=PDF_PAGES)
        self.gzip_article = gzip.compress(ARTICLE_HTML.encode())
        self.gzip_bomb = _zeros_gzip(HUGE_BYTES)
        self.requests: list[tuple[str, str]] = []  # (path, Host header)
        self.in_flight = 0
        self.max_in_flight: dict[str, int] = {}  # by the `group` query parameter
        self._group_in_flight: dict[str, int] = {}
        self.huge_bytes_sent = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = _Server((host, port), self._handler_class())
        if tls is not None:
            self._httpd.socket = tls.wrap_socket(self._httpd.socket, server_side=True)
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def authority(self) -> str:
        return f"127.0.0.1:{self.port}"

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def paths(self) -> list[str]:
        with self._lock:
            return [path for path, _host in self.requests]

    def in_flight_for(self, group: str) -> int:
        with self._lock:
            return self._group_in_flight.get(group, 0)

    def reset(self) -> None:
        with self._lock:
            self.requests.clear()
            self.max_in_flight.clear()
            self.huge_bytes_sent = 0

    def start(self) -> PageServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="page-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> PageServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # keep test output clean
                pass

            def _send(self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def _redirect(self, location: str) -> None:
                self._send(302, b"", "text/plain", {"Location": location})

            def do_GET(self):
                group = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query).get("group", [""])[0]
                with server._lock:
                    server.requests.append((self.path, self.headers.get("Host", "")))
                    server.in_flight += 1
                    now = server._group_in_flight[group] = server._group_in_flight.get(group, 0) + 1
                    server.max_in_flight[group] = max(server.max_in_flight.get(group, 0), now)
                try:
                    self._route()
                except (BrokenPipeError, ConnectionResetError):
                    self.close_connection = True  # the client hung up (a refused or timed-out read)
                finally:
                    with server._lock:
                        server.in_flight -= 1
                        server._group_in_flight[group] -= 1

            def _route(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                path, query = parsed.path, urllib.parse.parse_qs(parsed.query)
                if path == "/article.html":
                    self._send(200, ARTICLE_HTML.encode(), "text/html; charset=utf-8")
                elif path == "/doc.pdf":
                    self._send(200, server.pdf, "application/pdf")
                elif path == "/plain.txt":
                    self._send(200, PLAIN_TEXT.encode(), "text/plain; charset=utf-8")
                elif path == "/image.png":
                    self._send(200, PNG, "image/png")
                elif path == "/redirect-local":
                    self._redirect(f"http://127.0.0.1:{server.port}/article.html")
                elif path == "/redirect-to":
                    self._redirect(query.get("url", ["/article.html"])[0])
                elif path.startswith("/redirect-chain/"):
                    left = int(path.rsplit("/", 1)[-1])
                    self._redirect(f"/redirect-chain/{left - 1}" if left > 0 else "/article.html")
                elif path == "/gzip.html":
                    self._send(200, server.gzip_article, "text/html; charset=utf-8", {"Content-Encoding": "gzip"})
                elif path == "/gzip-bomb.html":
                    self._send(200, server.gzip_bomb, "text/html", {"Content-Encoding": "gzip"})
                elif path == "/huge.html":
                    self._huge()
                elif path == "/slow.html":
                    delay = float(query.get("delay", ["30"])[0])
                    if server._stopping.wait(delay):
                        return
                    self._send(200, ARTICLE_HTML.encode(), "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found", "text/plain")

            def _huge(self) -> None:
                # A small send buffer, so the count below is close to what the client took.
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, HUGE_CHUNK)
                self.send_response(200)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                self.wfile.flush()
                line = b"<p>" + b"All work and no play makes a very large page. " * 20 + b"</p>\n"
                block = b"<html><body>" + line * (HUGE_CHUNK // len(line))
                sent = 0
                while sent < HUGE_BYTES and not server._stopping.is_set():
                    self.wfile.write(f"{len(block):X}\r\n".encode() + block + b"\r\n")
                    self.wfile.flush()
                    sent += len(block)
                    with server._lock:
                        server.huge_bytes_sent = sent
                self.wfile.write(b"0\r\n\r\n")
                self.wfile.flush()

        return Handler


def main() -> None:  # pragma: no cover - manual use: python -m tests.servers.pages
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    server = PageServer(port=args.port).start()
    print(f"PAGES_URL=http://{server.authority}", flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":  # pragma: no cover
    main()
