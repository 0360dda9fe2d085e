"""`chainlit-persist`: the operator command.

    chainlit-persist [--json] [--env-file PATH] [-v] COMMAND ...

Settings come from the environment and `.env`, as the app reads them (`settings.py`).
Each module in `COMMAND_MODULES` adds its subcommands with `register(subparsers)`; every
parser it adds sets `run=<async def run(args, out) -> int>` as a default, which `main` runs
with `asyncio.run`. An expected failure (bad setting or input, a store that refuses, a
missing file) is one message on stderr — or `{"error": ...}` with `--json` — and exit
code 1; argparse's usage errors are exit code 2; an unexpected one keeps its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from ops.output import Output

if TYPE_CHECKING:
    from settings import Settings

PROG = "chainlit-persist"
COMMAND_MODULES: tuple[str, ...] = (
    "ops.users_cmd",
    "ops.schema_cmd",
    "ops.archive_cmd",
    "ops.retention_cmd",
    "ops.erase_cmd",
    "ops.sweep_cmd",
    "ops.doctor_cmd",
)

logger = logging.getLogger("chainlit").getChild("ops")


def expected_errors() -> tuple[type[BaseException], ...]:
    """What a command may fail with that is the operator's to fix, not a bug."""
    from datalayers.errors import DataLayerError
    from settings import ConfigurationError, MissingExtra
    from storage.base import StorageError

    return (ConfigurationError, MissingExtra, DataLayerError, StorageError, ValueError, OSError)


def cli_settings(args: argparse.Namespace | None = None) -> Settings:
    """The app's settings for this run (the `.env` was loaded by `main`); never exports
    a generated secret into the environment."""
    from settings import load_settings

    settings = load_settings(dotenv=False, export_secret=False)
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # as the app does (the SQLite file)
    return settings


def build_parser(modules: tuple[str, ...] = COMMAND_MODULES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Operate a chainlit-persist deployment: users, schema, "
                                     "backups (export/import/copy), retention, erasure, checks.")
    parser.add_argument("--json", action="store_true",
                        help="machine-readable: one JSON document on stdout, no progress, errors as {\"error\": ...}")
    parser.add_argument("--env-file", type=Path, default=None,
                        help="read settings from this file as well as the environment (default: .env, like the app)")
    parser.add_argument("-v", "--verbose", action="store_true", help="DEBUG logging on stderr")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def _load_env(env_file: Path | None) -> None:
    from dotenv import load_dotenv

    if env_file is None:
        load_dotenv(Path.cwd() / ".env", override=False)
        return
    if not env_file.is_file():
        raise FileNotFoundError(f"--env-file {env_file}: no such file")
    load_dotenv(env_file, override=False)


def _configure_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.WARNING)
    if verbose:  # the SDKs' DEBUG is wire-level noise; our own DEBUG is what -v is for
        for name in ("botocore", "aiobotocore", "urllib3", "azure", "asyncio", "aiosqlite"):
            logging.getLogger(name).setLevel(logging.INFO)


def main(argv: list[str] | None = None) -> int:
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help (0) or a usage error (2), already printed by argparse
        return exc.code if isinstance(exc.code, int) else 2
    out = Output(args.json)
    run = getattr(args, "run", None)
    if run is None:
        parser.print_help(sys.stderr)
        return 2
    _configure_logging(args.verbose)
    from chat.private_files import private_by_default

    private_by_default()  # archives, users files and SQLite files hold users' data: 600 / 700
    known = expected_errors()
    try:
        _load_env(args.env_file)
        return int(asyncio.run(run(args, out)) or 0)
    except KeyboardInterrupt:
        out.error("interrupted")
        return 130
    except known as exc:
        logger.debug("%s failed", args.command, exc_info=True)
        out.error(str(exc) or type(exc).__name__)
        return 1


if __name__ == "__main__":
    sys.exit(main())
