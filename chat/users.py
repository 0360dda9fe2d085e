"""Password users defined by the operator, with scrypt hashes (never plain passwords).

Users come from a TOML file (`APP_USERS_FILE`, default `<APP_DATA_DIR>/users.toml`) and/or
the `APP_USERS` variable (`name:hash;name2:hash2`, for containers). Manage the file with

    python -m chat.users add alice            # asks for the password twice
    python -m chat.users hash                 # prints a hash for APP_USERS
    python -m chat.users list | remove alice
    python -m chat.users logout alice         # ends alice's sessions everywhere
    python -m chat.users token create alice --name laptop [--expires-days 90]
    python -m chat.users token list alice | token revoke alice TOKEN_ID [--all]

Changing a password (`add` of an existing user), `remove` and `logout` end the user's
login sessions at once, on every app instance: the time is written to the configured
database (DATABASE_URL, as the app reads it), where the app checks every request.
`remove` also deletes the user's API tokens. `token create` works for a user of the
users file who has never logged in, and for one the database knows (an OAuth login); the
token is printed once, alone on the last line of standard output (`TOKEN=$(...)`).

On a fresh machine with no user defined anywhere, `ensure_default_admin` creates `admin`
with a random password, prints it once and writes it to `<APP_DATA_DIR>/admin_password.txt`
(mode 0600). A password given in `APP_ADMIN_PASSWORD` is used instead and written nowhere.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import getpass
import hashlib
import hmac
import json
import os
import re
import secrets
import sys
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

SCRYPT_N = 2**14
SCRYPT_R = 8
SCRYPT_P = 1
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}$")
ADMIN_PASSWORD_FILE = "admin_password.txt"


class UserConfigError(ValueError):
    """The users file or APP_USERS is malformed."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """`scrypt$N$r$p$salt$hash`: self-describing, so the cost can be raised later."""
    if not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def verify_password(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = encoded.split("$")
        if scheme != "scrypt":
            return False
        expected = _unb64(digest)
        actual = hashlib.scrypt(
            password.encode(), salt=_unb64(salt), n=int(n), r=int(r), p=int(p), dklen=len(expected)
        )
    except ValueError:
        return False
    return hmac.compare_digest(actual, expected)


# A hash nobody knows the password of, checked for unknown users so a login takes the same
# time whether or not the user exists.
_DUMMY_HASH = hash_password(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class UserRecord:
    name: str
    password_hash: str = field(repr=False)
    display_name: str | None = None
    role: str = "user"


def _check_name(name: str) -> str:
    if not NAME_RE.match(name):
        raise UserConfigError(f"invalid user name {name!r}: letters, digits and . _ @ + - (max 64)")
    return name


def parse_users_toml(text: str, source: str) -> dict[str, UserRecord]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise UserConfigError(f"{source}: {exc}") from exc
    users = {}
    for name, entry in (data.get("users") or {}).items():
        _check_name(name)
        if not isinstance(entry, dict) or not isinstance(entry.get("password"), str):
            raise UserConfigError(f"{source}: users.{name}.password (a hash) is required")
        if not entry["password"].startswith("scrypt$"):
            raise UserConfigError(
                f"{source}: users.{name}.password must be a hash from `python -m chat.users hash`, not a plain password"
            )
        users[name] = UserRecord(
            name=name,
            password_hash=entry["password"],
            display_name=entry.get("display_name"),
            role=entry.get("role", "user"),
        )
    return users


def parse_users_env(value: str) -> dict[str, UserRecord]:
    users = {}
    for item in filter(None, (part.strip() for part in value.split(";"))):
        name, sep, encoded = item.partition(":")
        if not sep or not encoded.startswith("scrypt$"):
            raise UserConfigError("APP_USERS must look like 'name:scrypt$...;name2:scrypt$...'")
        users[_check_name(name.strip())] = UserRecord(name=name.strip(), password_hash=encoded.strip())
    return users


def _toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


def render_users_toml(users: Mapping[str, UserRecord]) -> str:
    lines = [
        "# Password users of the chat app. Passwords are scrypt hashes: manage this file with",
        "#   python -m chat.users add NAME | remove NAME | list",
        "",
    ]
    for user in users.values():
        lines.append(f"[users.{_toml_string(user.name)}]")
        lines.append(f"password = {_toml_string(user.password_hash)}")
        if user.display_name:
            lines.append(f"display_name = {_toml_string(user.display_name)}")
        lines.append(f"role = {_toml_string(user.role)}")
        lines.append("")
    return "\n".join(lines)


def _write_private(path: Path, text: str) -> None:
    """Write atomically with mode 0600 (hashes and passwords are secrets)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


class UserStore:
    def __init__(self, users_file: Path, env_users: str = ""):
        self.users_file = users_file
        self.env_users = env_users

    @classmethod
    def from_env(cls, data_dir: Path, env: Mapping[str, str] | None = None) -> UserStore:
        env = os.environ if env is None else env
        users_file = Path(env.get("APP_USERS_FILE") or data_dir / "users.toml").expanduser()
        return cls(users_file, env.get("APP_USERS") or "")

    def load_file(self) -> dict[str, UserRecord]:
        try:
            text = self.users_file.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        return parse_users_toml(text, str(self.users_file))

    def load(self) -> dict[str, UserRecord]:
        users = self.load_file()
        users.update(parse_users_env(self.env_users))  # the environment wins
        return users

    def save_file(self, users: Mapping[str, UserRecord]) -> None:
        _write_private(self.users_file, render_users_toml(users))

    def add(self, name: str, password: str, display_name: str | None = None, role: str = "user") -> UserRecord:
        users = self.load_file()
        record = UserRecord(_check_name(name), hash_password(password), display_name, role)
        users[name] = record
        self.save_file(users)
        return record

    def remove(self, name: str) -> bool:
        users = self.load_file()
        if users.pop(name, None) is None:
            return False
        self.save_file(users)
        return True

    def authenticate(self, name: str, password: str) -> UserRecord | None:
        """The user if the password matches. Blocking (scrypt): call via `authenticate_async`."""
        user = self.load().get(name)
        if user is None:
            verify_password(password, _DUMMY_HASH)
            return None
        return user if verify_password(password, user.password_hash) else None

    async def authenticate_async(self, name: str, password: str) -> UserRecord | None:
        return await asyncio.to_thread(self.authenticate, name, password)

    def ensure_default_admin(self, data_dir: Path, admin_password: str = "", out=None) -> str | None:
        """Create `admin` when no user is defined at all; return the password if created."""
        if self.load() or self.users_file.exists():
            return None
        password = admin_password or secrets.token_urlsafe(12)
        self.add("admin", password, display_name="Administrator", role="admin")
        if not admin_password:  # the operator's own password stays where they put it
            note = data_dir / ADMIN_PASSWORD_FILE
            _write_private(note, f"user: admin\npassword: {password}\n")
            print(
                f"\n  Created the first user 'admin' with password: {password}\n"
                f"  (also written to {note}; change it with `python -m chat.users add admin`)\n",
                file=out or sys.stderr,
                flush=True,
            )
        return password


def _read_new_password(args) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass("Password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise SystemExit("passwords differ")
    if len(password) < 8:
        raise SystemExit("password must have at least 8 characters")
    return password


@asynccontextmanager
async def cli_data_layer(settings) -> AsyncIterator[Any]:
    """The data layer the app uses, built from the same settings (with an in-memory
    journal: the app's journal file belongs to the app)."""
    from dataclasses import replace

    layer = replace(settings, journal_path=None).build_data_layer()
    try:
        yield layer
    finally:
        await layer.close()


def _on_data_layer(settings, work: Callable[[Any], Awaitable[Any]]) -> Any:
    async def run():
        async with cli_data_layer(settings) as layer:
            return await work(layer)

    return asyncio.run(run())


def _end_sessions(settings, name: str, reason: str, *, tokens: bool = False) -> int:
    """Revoke `name`'s login sessions (and, with `tokens`, delete their API tokens) in the
    app's database; 0, or 1 with what to do."""
    async def work(layer) -> int:
        if not hasattr(layer, "revoke_sessions"):
            raise RuntimeError(f"the data layer {type(layer).__name__} cannot store session revocations")
        await layer.revoke_sessions(name, reason)
        return await layer.delete_api_tokens(name) if tokens else 0

    try:
        count = _on_data_layer(settings, work)
    except Exception as exc:
        todo = f"python -m chat.users logout {name}"
        if tokens:
            todo += f" and python -m chat.users token revoke {name} --all"
        print(f"could not end the sessions{' and API tokens' if tokens else ''} of {name!r} ({type(exc).__name__}: "
              f"{exc}); they stay valid until this succeeds: {todo}", file=sys.stderr)
        return 1
    print(f"ended every session of {name!r}")
    if tokens:
        print(f"revoked {count} API token(s) of {name!r}")
    return 0


def _when(moment: datetime | None, now: datetime | None = None) -> str:
    if moment is None:
        return "never"
    text = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    return f"{text} (expired)" if now is not None and moment <= now else text


def _token_command(args, settings, store: UserStore) -> int:
    from chainlit.user import User

    from chat.api_tokens import ApiTokens, check_name

    name = args.user

    async def create(layer) -> int:
        record = store.load().get(name)
        if await layer.get_user(name) is None:
            if record is None:
                print(f"no user {name!r}: not in {store.users_file}, APP_USERS or the app's database",
                      file=sys.stderr)
                return 2
            # As a password login would create it (app.py): the API finds the user by it.
            await layer.create_user(User(identifier=name, display_name=record.display_name,
                                         metadata={"role": record.role, "provider": "credentials"}))
        lifetime = timedelta(days=args.expires_days) if args.expires_days else None
        plaintext, token = await ApiTokens(layer).issue(name, label, lifetime)
        print(f"created API token {token.id} ({token.name!r}) for {name!r}, expires: {_when(token.expires_at)}.\n"
              "It is shown only this once (the last line of standard output): store it now.", file=sys.stderr)
        print(plaintext)
        return 0

    async def listing(layer) -> int:
        now = datetime.now(UTC)
        for token in await ApiTokens(layer).list(name):
            print("\t".join((token.id, token.name, _when(token.created_at), _when(token.last_used_at),
                             _when(token.expires_at, now))))
        return 0

    async def revoke(layer) -> int:
        tokens = ApiTokens(layer)
        if args.all:
            print(f"revoked {await tokens.revoke_all(name)} API token(s) of {name!r}")
            return 0
        if not await tokens.revoke(name, args.token_id):
            print(f"{name!r} has no API token {args.token_id!r}", file=sys.stderr)
            return 1
        print(f"revoked API token {args.token_id} of {name!r}")
        return 0

    if args.token_command == "create":
        try:
            label = check_name(args.label)
        except ValueError as exc:
            print(exc, file=sys.stderr)
            return 2
    elif args.token_command == "revoke" and args.all == bool(args.token_id):
        print("give a TOKEN_ID or --all", file=sys.stderr)
        return 2
    work = {"create": create, "list": listing, "revoke": revoke}[args.token_command]
    try:
        return _on_data_layer(settings, work)
    except Exception as exc:
        print(f"could not {args.token_command} API tokens of {name!r} ({type(exc).__name__}: {exc})", file=sys.stderr)
        return 1


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return number


def _token_parser(sub) -> None:
    token = sub.add_parser("token", help="personal API tokens of a user (stored only as hashes)")
    commands = token.add_subparsers(dest="token_command", required=True)
    create = commands.add_parser("create", help="issue a token; it is printed once, on the last line")
    create.add_argument("user", metavar="NAME")
    create.add_argument("--name", dest="label", required=True, help="what the token is for (1-100 characters)")
    create.add_argument("--expires-days", type=_positive_int, help="valid for N days (default: until revoked)")
    listing = commands.add_parser("list", help="a user's tokens: id, name, created, last used, expires")
    listing.add_argument("user", metavar="NAME")
    revoke = commands.add_parser("revoke", help="delete a token (it stops working at once)")
    revoke.add_argument("user", metavar="NAME")
    revoke.add_argument("token_id", metavar="TOKEN_ID", nargs="?")
    revoke.add_argument("--all", action="store_true", help="every token of the user")


def add_user_commands(sub) -> None:
    """The subcommands (add, remove, logout, list, token, hash): shared by `python -m
    chat.users` and `chainlit-persist users`."""
    add = sub.add_parser("add", help="add a user or change their password")
    add.add_argument("name")
    add.add_argument("--display-name")
    add.add_argument("--role", default="user")
    add.add_argument("--password-stdin", action="store_true", help="read the password from standard input")
    rm = sub.add_parser("remove", help="remove a user (and end their sessions, delete their API tokens)")
    rm.add_argument("name")
    out = sub.add_parser("logout", help="end every login session of a user, on every app instance")
    out.add_argument("name")
    sub.add_parser("list", help="list users")
    _token_parser(sub)
    hsh = sub.add_parser("hash", help="print a password hash (for APP_USERS)")
    hsh.add_argument("--password-stdin", action="store_true")


def run_command(args) -> int:
    """Run a parsed users subcommand (blocking: it runs its own event loop for the database)."""
    from chat.private_files import private_by_default
    from settings import load_settings

    private_by_default()  # the users file, and a SQLite database this may create
    settings = load_settings(export_secret=False)
    store = UserStore.from_env(settings.data_dir)
    if args.command == "add":
        existed = args.name in store.load_file()
        store.add(args.name, _read_new_password(args), args.display_name, args.role)
        print(f"saved user {args.name!r} in {store.users_file}")
        if existed:
            return _end_sessions(settings, args.name, "password changed")
    elif args.command == "remove":
        if not store.remove(args.name):
            print(f"no user {args.name!r} in {store.users_file}", file=sys.stderr)
            return 1
        print(f"removed user {args.name!r}")
        return _end_sessions(settings, args.name, "user removed", tokens=True)
    elif args.command == "logout":
        return _end_sessions(settings, args.name, "ended by the operator")
    elif args.command == "token":
        return _token_command(args, settings, store)
    elif args.command == "list":
        for user in store.load().values():
            print(f"{user.name}\t{user.role}\t{user.display_name or ''}")
    else:
        print(hash_password(_read_new_password(args)))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m chat.users", description=__doc__.split("\n\n")[0])
    add_user_commands(parser.add_subparsers(dest="command", required=True))
    return run_command(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
