"""The console command itself: help for every subcommand, one JSON document with --json,
exit codes (0 done, 1 an expected failure with one message and no traceback, 2 usage), the
installed script, the old `python -m` entry points."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ops.cli import build_parser, main


def _subcommands(parser) -> dict[str, object]:
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def test_every_subcommand_has_help(capsys):
    commands = _subcommands(build_parser())
    assert {"users", "migrate", "provision", "upgrade", "export", "import", "copy"} <= set(commands)
    for name, parser in commands.items():
        assert main([name, "--help"]) == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: chainlit-persist " + name), name
        for sub in _subcommands(parser):  # users add|list|...
            assert main([name, sub, "--help"]) == 0
            assert capsys.readouterr().out.startswith(f"usage: chainlit-persist {name} {sub}")


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["copy", "--from", "x"]) == 2  # --to is required
    assert "usage:" in capsys.readouterr().err


async def test_expected_failures_are_one_message(cli, tmp_path):
    code, document, err = await cli("--json", "import", str(tmp_path / "missing"))
    assert code == 1 and "no such archive" in document["error"] and "Traceback" not in err
    code, document, err = await cli("import", str(tmp_path / "missing"))
    assert code == 1 and err.startswith("error: ") and "Traceback" not in err
    code, document, _ = await cli("--json", "copy", "--from", "sqlite:///a.db", "--to", "sqlite:///b.db,file:///x")
    assert code == 1 and "DATABASE_URL,STORAGE_URL" in document["error"]
    code, document, _ = await cli("--json", "copy", "--from", "nosuch://x,file:///y", "--to", "sqlite:///b.db,file:///x")
    assert code == 1 and "nosuch" in document["error"]
    code, document, _ = await cli("--json", "--env-file", str(tmp_path / "nope.env"), "migrate")
    assert code == 1 and "nope.env" in document["error"]


async def test_json_output_parses(cli, backends, tmp_path):
    code, document, err = await cli("--json", "migrate")
    assert code == 0, err
    assert document["action"] == "upgrade" and document["revision"]
    code, document, _ = await cli("--json", "migrate", "current")
    assert code == 0 and document["revision"]
    source = await backends.endpoint("sqlite", "local")
    code, document, err = await cli("--json", "export", str(tmp_path / "a"), "--from", source)
    assert code == 1 and "users" in document["error"]  # no schema there: an export never creates one
    async with backends.open(source) as layer:
        await layer.migrate()
    code, document, err = await cli("--json", "export", str(tmp_path / "b"), "--from", source)
    assert code == 0 and document["threads"] == 0 and err == ""  # quiet in --json mode


def test_installed_console_script(console, tmp_path):
    result = console("--help")
    assert result.returncode == 0 and "export" in result.stdout and "copy" in result.stdout
    result = console("--json", "migrate")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["revision"]
    env_file = tmp_path / "other.env"
    env_file.write_text(f"DATABASE_URL=sqlite+aiosqlite:///{tmp_path / 'other.db'}\n")
    result = console("--json", "--env-file", str(env_file), "migrate")
    assert result.returncode == 0 and "other.db" in json.loads(result.stdout)["database"]
    result = console("import", str(tmp_path / "missing"))
    assert result.returncode == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("module", ["datalayers.migrations", "datalayers.dynamodb", "chat.users"])
def test_old_entry_points_still_run(module, ops_env, tmp_path):
    import os

    result = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **ops_env}, cwd=tmp_path)
    assert result.returncode == 0 and "usage:" in result.stdout
