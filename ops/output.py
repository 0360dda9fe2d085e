"""What a command prints: progress and notes on stderr, the final summary on stdout.

With `--json` nothing but one JSON document goes to stdout and stderr stays quiet (errors
are the document `{"error": ...}`), so scripts can parse the result. On a terminal the
progress is a rich bar (count, rate, ETA); when stderr is a pipe or a file it is a plain
line every few seconds, which a log keeps readable.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import IO, Any

PLAIN_PROGRESS_SECONDS = 5.0


def _default(value: Any) -> Any:
    # datetimes, paths and the like: their text form is what an operator wants to read
    return str(value)


def _ignore(n: int = 1) -> None:
    pass


class Output:
    def __init__(self, json_mode: bool = False, *, stdout: IO[str] | None = None, stderr: IO[str] | None = None):
        self.json = json_mode
        self._stdout = stdout
        self._stderr = stderr

    # Resolved when used, so a test's redirected sys.stdout/sys.stderr is honoured.
    @property
    def stdout(self) -> IO[str]:
        return self._stdout or sys.stdout

    @property
    def stderr(self) -> IO[str]:
        return self._stderr or sys.stderr

    def info(self, message: str) -> None:
        if not self.json:
            print(message, file=self.stderr, flush=True)

    def error(self, message: str) -> None:
        if self.json:
            self.emit({"error": message})
        else:
            print(f"error: {message}", file=self.stderr, flush=True)

    def emit(self, document: Any) -> None:
        print(json.dumps(document, default=_default, ensure_ascii=False, sort_keys=False), file=self.stdout, flush=True)

    def result(self, summary: dict, text: str | None = None) -> None:
        """The final summary: the JSON document, or `text` (else a table of the summary)."""
        if self.json:
            self.emit(summary)
            return
        if text is not None:
            print(text, file=self.stdout, flush=True)
            return
        from rich.console import Console
        from rich.table import Table

        table = Table(show_header=False, box=None, pad_edge=False)
        table.add_column(style="bold")
        table.add_column()
        for key, value in summary.items():
            shown = json.dumps(value, default=_default, ensure_ascii=False) if isinstance(value, dict | list) else str(value)
            table.add_row(str(key), shown)
        Console(file=self.stdout, soft_wrap=True).print(table)

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[Callable[[int], None]]:
        """Yields `advance(n)`. Rich bar on a terminal, periodic plain lines otherwise,
        nothing in --json mode."""
        if self.json:
            yield _ignore
            return
        stream = self.stderr
        if getattr(stream, "isatty", lambda: False)():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TaskProgressColumn,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )
            from rich.text import Text

            class RateColumn(TextColumn):
                def render(self, task):
                    speed = task.finished_speed or task.speed
                    return Text(f"{speed:,.0f}/s" if speed else "-/s")

            columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TaskProgressColumn(),
                       RateColumn(""), TimeElapsedColumn(), TimeRemainingColumn()]
            with Progress(*columns, console=Console(file=stream), transient=False) as bar:
                task = bar.add_task(description, total=total)

                def advance_bar(n: int = 1) -> None:
                    bar.advance(task, n)

                yield advance_bar
            return
        state = {"done": 0, "last": time.monotonic()}
        started = state["last"]

        def line() -> str:
            elapsed = max(time.monotonic() - started, 1e-9)
            rate = state["done"] / elapsed
            text = f"{description}: {state['done']:,}"
            if total:
                eta = (total - state["done"]) / rate if rate else float("inf")
                text += f"/{total:,} ({100 * state['done'] / total:.0f}%), eta {eta:,.0f}s"
            return f"{text}, {rate:,.1f}/s"

        def advance(n: int = 1) -> None:
            state["done"] += n
            now = time.monotonic()
            if now - state["last"] >= PLAIN_PROGRESS_SECONDS:
                state["last"] = now
                print(line(), file=stream, flush=True)

        yield advance
        print(line() + " - done", file=stream, flush=True)
