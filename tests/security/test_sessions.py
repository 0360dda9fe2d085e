"""Sessions that end, login throttling, CORS, cookies and file permissions, against the real
app (HTTP and Socket.IO as the browser speaks them) on SQLite and on PostgreSQL.

The app of this module sits behind a trusted proxy on 127.0.0.1 (`APP_TRUSTED_PROXIES`), so
a test speaks for any client address with `X-Forwarded-For`; a connection from 127.0.0.2
is a client talking to the app directly, whose forwarded headers count for nothing.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
import subprocess
import sys
import time
import uuid

import httpx
import pytest
import socketio

from tests.e2e.app_runner import ROOT
from tests.faults.chainlit_client import SOCKET_PATH, ChainlitClient
from tests.security.conftest import launch_app

ADMIN_PASSWORD = f"operator-chosen-{uuid.uuid4().hex[:10]}"
PARTNER = "https://partner.example"
EVIL = "https://evil.example"
APP_ENV = {
    "APP_TRUSTED_PROXIES": "127.0.0.1",
    "APP_ALLOWED_ORIGINS": PARTNER,
    "APP_SESSION_LIFETIME_HOURS": "2",
    "APP_ADMIN_PASSWORD": ADMIN_PASSWORD,
    "APP_LOGIN_MAX_FAILURES": "6",  # delays after 2 failures, then a lock
    "APP_LOGIN_DELAY_SECONDS": "0.2",
    "APP_LOGIN_LOCK_MINUTES": "1",
}
CACHE_SECONDS = 2.0  # chat.sessions: how long an instance may use a revocation time it read
SWEEP_SECONDS = 5.0  # chat.sessions: how often open sockets are checked


async def eventually(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.1)
    return result


async def users_cli(app, *args: str, stdin: str = "") -> str:
    """`python -m chat.users ...` in its own process, with the app's settings."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "chat.users", *args, cwd=ROOT, env=app.running.env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = await proc.communicate(stdin.encode())
    assert proc.returncode == 0, out.decode()
    return out.decode()


async def status_of(app, client: ChainlitClient, path: str = "/user") -> int:
    async with app.http(client) as http:
        return (await http.get(path)).status_code


def socket_auth() -> dict:
    return {"clientType": "webapp", "sessionId": str(uuid.uuid4()), "threadId": "", "userEnv": "{}", "chatProfile": ""}


async def socket_refused(app, client: ChainlitClient) -> bool:
    """Both ways the frontend opens its socket refuse this login: the polling handshake
    (401) and a websocket handshake."""
    async with app.http(client) as http:
        polling = await http.get(f"{SOCKET_PATH}/?EIO=4&transport=polling")
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    direct = socketio.AsyncClient(reconnection=False)
    try:
        await direct.connect(app.url, headers={"Cookie": cookie}, auth=socket_auth(), socketio_path=SOCKET_PATH,
                             transports=["websocket"], wait_timeout=10)
    except socketio.exceptions.ConnectionError:
        return polling.status_code == 401
    finally:
        await direct.disconnect()
    return False


def claims_of(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


# ---------------------------------------------------------------------- sessions that end
async def test_logout_ends_every_session_of_the_user_on_http_and_socket(security_app, bob):
    laptop = await security_app.login("alice")
    phone = await security_app.login("alice")
    try:
        await phone.connect()
        await bob.connect()
        async with security_app.http(laptop) as http:
            logout = await http.post("/logout")
            assert logout.status_code == 200, logout.text
        # The instance that handled the logout closes alice's open sockets at once.
        await eventually(lambda: asyncio.sleep(0, not phone.connected), 3, "the phone's socket is closed")
        assert await status_of(security_app, phone) == 401
        assert await status_of(security_app, laptop) == 401
        async with security_app.http(phone) as http:
            threads = await http.post("/project/threads", json={"pagination": {"first": 5}, "filter": {}})
            assert threads.status_code == 401
        async with security_app.http() as http:  # an old token may not buy a fresh one
            traded = await http.post("/auth/jwt", headers={"Authorization": f"Bearer {phone.cookies['access_token']}"})
            assert traded.status_code == 401 and "access_token" not in traded.cookies
        assert await socket_refused(security_app, phone)
        # Nobody else's session ended, and alice can log in again straight away.
        assert bob.connected and await status_of(security_app, bob) == 200
        started = time.monotonic()
        again = await security_app.login("alice")
        assert time.monotonic() - started < 2.5
        assert await status_of(security_app, again) == 200
        await again.connect()
        await again.close()
    finally:
        await phone.close()
        await laptop.close()


async def test_a_password_change_and_a_removal_by_the_cli_end_sessions(security_app):
    name = f"carol{uuid.uuid4().hex[:6]}"
    await users_cli(security_app, "add", name, "--password-stdin", stdin="carol-old-pw-1\n")
    carol = await security_app.login(name, "carol-old-pw-1")
    try:
        await carol.connect()
        out = await users_cli(security_app, "add", name, "--password-stdin", stdin="carol-new-pw-2\n")
        assert f"ended every session of {name!r}" in out
        # Written by another process: this instance sees it within its cache time.
        await eventually(lambda: _is_401(security_app, carol), CACHE_SECONDS + 1, "the old token is refused")
        assert await socket_refused(security_app, carol)
        await eventually(lambda: asyncio.sleep(0, not carol.connected), SWEEP_SECONDS + CACHE_SECONDS + 2,
                         "the open socket is closed")
        async with security_app.http() as http:
            old = await http.post("/login", data={"username": name, "password": "carol-old-pw-1"})
            assert old.status_code == 401
        fresh = await security_app.login(name, "carol-new-pw-2")
        assert await status_of(security_app, fresh) == 200

        out = await users_cli(security_app, "remove", name)
        assert f"ended every session of {name!r}" in out
        await eventually(lambda: _is_401(security_app, fresh), CACHE_SECONDS + 1, "a removed user's token is refused")
        assert await socket_refused(security_app, fresh)
        async with security_app.http() as http:
            gone = await http.post("/login", data={"username": name, "password": "carol-new-pw-2"})
            assert gone.status_code == 401
    finally:
        await carol.close()


async def _is_401(app, client) -> bool:
    return await status_of(app, client) == 401


async def test_the_token_lifetime_is_the_setting(security_app, alice):
    claims = claims_of(alice.cookies["access_token"])
    assert claims["exp"] - claims["iat"] == 2 * 3600
    async with security_app.http() as http:
        login = await http.post("/login", data={"username": "bob", "password": "bob-secret-pw-2"})
    assert "Max-Age=7200" in login.headers["set-cookie"]


# ---------------------------------------------------------------------- throttling
async def test_guessing_is_slowed_then_locked_and_the_right_user_elsewhere_is_not(security_app):
    name = f"dave{uuid.uuid4().hex[:6]}"
    password = "dave-right-pw-1"
    await users_cli(security_app, "add", name, "--password-stdin", stdin=f"{password}\n")
    attacker = {"X-Forwarded-For": "203.0.113.7"}
    statuses, waits = [], []
    async with security_app.http() as http:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            answer = await http.post("/login", data={"username": name, "password": f"guess-{len(statuses)}"},
                                     headers=attacker)
            statuses.append(answer.status_code)
            if answer.status_code == 429:
                retry_after = int(answer.headers["retry-after"])
                assert "Try again in" in answer.json()["detail"]
                waits.append(retry_after)
                if retry_after > 30:  # locked
                    break
                await asyncio.sleep(0.25)
            else:
                assert answer.status_code == 401
        assert statuses.count(401) == 6, statuses
        assert waits[0] <= 2 and waits[-1] > 30, waits  # a short delay first, then the lock
        # Locked: even the right password from that address is refused, unchecked.
        locked = await http.post("/login", data={"username": name, "password": password}, headers=attacker)
        assert locked.status_code == 429
        # The user, from another address, is let in at once.
        started = time.monotonic()
        mine = await http.post("/login", data={"username": name, "password": password},
                               headers={"X-Forwarded-For": "198.51.100.20"})
        assert mine.status_code == 200 and time.monotonic() - started < 1.0
    log = security_app.log_text()
    assert log.count(f"WARNING - chainlit - failed login as {name!r} from 203.0.113.7") == 6
    assert "guess-" not in log and password not in log


async def test_a_direct_client_cannot_choose_its_address(security_app):
    """X-Forwarded-For counts only from a trusted proxy: from 127.0.0.2 it is ignored."""
    name = f"erin{uuid.uuid4().hex[:6]}"
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    async with security_app.http(transport=transport) as http:
        answer = await http.post("/login", data={"username": name, "password": "wrong-pw-1"},
                                 headers={"X-Forwarded-For": "192.0.2.99"})
        assert answer.status_code == 401
    log = security_app.log_text()
    assert f"failed login as {name!r} from 127.0.0.2" in log and "192.0.2.99" not in log


# ---------------------------------------------------------------------- CORS
async def test_cors_never_gives_a_foreign_origin_the_users_credentials(security_app, alice):
    async with security_app.http(alice) as http:
        foreign = await http.get("/user", headers={"Origin": EVIL})
        assert "access-control-allow-origin" not in foreign.headers
        assert "access-control-allow-credentials" not in foreign.headers
        preflight = await http.options("/project/threads", headers={
            "Origin": EVIL, "Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"})
        assert preflight.status_code == 400
        assert "access-control-allow-origin" not in preflight.headers
        assert "access-control-allow-credentials" not in preflight.headers
        listed = await http.get("/user", headers={"Origin": PARTNER})
        assert listed.headers["access-control-allow-origin"] == PARTNER
        assert listed.headers["access-control-allow-credentials"] == "true"

        handshake = f"{SOCKET_PATH}/?EIO=4&transport=polling"
        assert (await http.get(handshake, headers={"Origin": EVIL})).status_code == 403
        assert (await http.get(handshake, headers={"Origin": security_app.url})).status_code == 200
        partner = await http.get(handshake, headers={"Origin": PARTNER})
        assert partner.status_code == 200 and partner.headers["access-control-allow-origin"] == PARTNER

    cookie = "; ".join(f"{k}={v}" for k, v in alice.cookies.items())
    auth = socket_auth()
    hijack = socketio.AsyncClient(reconnection=False)
    try:
        with pytest.raises(socketio.exceptions.ConnectionError):
            await hijack.connect(security_app.url, headers={"Cookie": cookie, "Origin": EVIL}, auth=auth,
                                 socketio_path=SOCKET_PATH, transports=["websocket"], wait_timeout=10)
    finally:
        await hijack.disconnect()
    own = socketio.AsyncClient(reconnection=False)
    await own.connect(security_app.url, headers={"Cookie": cookie, "Origin": security_app.url}, auth=auth,
                      socketio_path=SOCKET_PATH, transports=["websocket"], wait_timeout=10)
    await own.disconnect()


# ---------------------------------------------------------------------- cookies
async def test_the_login_cookie_is_secure_when_a_trusted_proxy_says_https(security_app):
    form = {"username": "bob", "password": "bob-secret-pw-2"}

    async def cookie(headers: dict, **kwargs) -> str:
        async with security_app.http(**kwargs) as http:
            answer = await http.post("/login", data=form, headers=headers)
            assert answer.status_code == 200
            return answer.headers["set-cookie"]

    assert "Secure" in await cookie({"X-Forwarded-Proto": "https"})
    assert "Secure" not in await cookie({})
    # A client talking to the app directly cannot claim HTTPS.
    direct = httpx.AsyncHTTPTransport(local_address="127.0.0.2")
    assert "Secure" not in await cookie({"X-Forwarded-Proto": "https"}, transport=direct)


# ---------------------------------------------------------------------- files
async def test_the_data_folder_is_private_and_the_given_admin_password_is_on_no_disk(security_app, alice):
    await alice.connect()
    await alice.send("a message, so the database and the journal are written")
    tmp = security_app.running.tmp
    data = tmp / "data"
    loose = []
    for root in (data, tmp / "files"):
        for path in [root, *root.rglob("*")]:
            mode = stat.S_IMODE(path.lstat().st_mode)
            if mode & 0o077 or (path.is_dir() and mode != 0o700):
                loose.append(f"{path} {oct(mode)}")
    assert loose == []
    if security_app.backend == "sqlite":
        assert (data / "chainlit.db").exists()
    assert not (data / "admin_password.txt").exists()
    holders = [p for p in tmp.rglob("*") if p.is_file() and ADMIN_PASSWORD.encode() in p.read_bytes()]
    assert holders == []
    async with security_app.http() as http:  # the operator's password is the admin's
        assert (await http.post("/login", data={"username": "admin", "password": ADMIN_PASSWORD})).status_code == 200


async def test_without_a_trusted_proxy_forwarded_headers_count_for_nothing(tmp_path):
    """The default: no proxy is believed, not even one on loopback (uvicorn's own default)."""
    app = launch_app(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'chainlit.db'}", "sqlite")
    try:
        forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-For": "192.0.2.50"}
        async with app.http() as http:
            login = await http.post("/login", data={"username": "bob", "password": "bob-secret-pw-2"}, headers=forwarded)
            assert login.status_code == 200 and "Secure" not in login.headers["set-cookie"]
            wrong = await http.post("/login", data={"username": "bob", "password": "wrong-pw-1"}, headers=forwarded)
            assert wrong.status_code == 401
        log = app.log_text()
        assert "failed login as 'bob' from 127.0.0.1" in log and "192.0.2.50" not in log
    finally:
        app.stop()


# ---------------------------------------------------------------------- the parts, alone
class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_throttle_delays_grow_then_lock_and_the_right_user_elsewhere_goes_through():
    from chat.throttle import Attempt, LoginThrottle

    clock = FakeClock()
    throttle = LoginThrottle(max_failures=6, delay_seconds=1.0, lock_seconds=60, clock=clock)

    def fail(name: str, address: str) -> float:
        attempt = throttle.begin(name, address)
        if not isinstance(attempt, Attempt):
            return attempt
        throttle.finish(attempt, False)
        return 0.0

    assert fail("bob", "a") == 0 and fail("bob", "a") == 0  # a person mistyping is never slowed
    waits = []
    for _ in range(4):
        waits.append(fail("bob", "a"))  # refused: must wait
        clock.now += waits[-1]
        assert fail("bob", "a") == 0
    assert waits == [1.0, 2.0, 4.0, 8.0]
    assert fail("bob", "a") == pytest.approx(60)  # six failures: locked
    right = throttle.begin("bob", "b")  # another address, no failure of its own
    assert isinstance(right, Attempt)
    throttle.finish(right, True)
    clock.now += 61
    assert fail("bob", "a") == 0  # the lock ran out: counted afresh


def test_throttle_counts_parallel_attempts_and_many_addresses_on_one_name():
    from chat.throttle import Attempt, LoginThrottle

    clock = FakeClock()
    throttle = LoginThrottle(max_failures=6, delay_seconds=1.0, lock_seconds=60, clock=clock)
    # Past the free allowance only one attempt per name and address is judged at a time.
    in_flight = [throttle.begin("bob", "a") for _ in range(5)]
    assert [isinstance(a, Attempt) for a in in_flight] == [True, True, False, False, False]
    for attempt in in_flight[:2]:
        throttle.finish(attempt, False)
    # Many addresses, one guess each: once the name has many failures, an address that has
    # failed on it once waits, while a fresh address is still let through.
    for i in range(10):
        attempt = throttle.begin("carol", f"10.0.0.{i}")
        throttle.finish(attempt, False)
    assert throttle.begin("carol", "10.0.0.3") == pytest.approx(1.0)
    assert isinstance(throttle.begin("carol", "10.0.0.99"), Attempt)
    # A success clears this address's count for the name only.
    attempt = throttle.begin("dave", "x")
    throttle.finish(attempt, False)
    ok = throttle.begin("dave", "x")
    assert throttle.finish(ok, True) == 0


class MemorySessions:
    def __init__(self):
        self.times: dict = {}
        self.reads = 0
        self.fail = False

    async def revoke_sessions(self, identifier, reason=""):
        from datetime import UTC, datetime

        self.times[identifier] = datetime.now(UTC)
        return self.times[identifier]

    async def sessions_revoked_at(self, identifier):
        self.reads += 1
        if self.fail:
            raise ConnectionError("database down")
        return self.times.get(identifier)


async def test_session_guard_refuses_tokens_of_the_revoked_second_and_caches_briefly(caplog):
    import logging
    from datetime import UTC, datetime

    from chat.sessions import SessionGuard

    clock = FakeClock()
    store = MemorySessions()
    guard = SessionGuard(store, secret=lambda: "s" * 32, cookie_name="access_token",
                         logger=logging.getLogger("test.sessions"), cache_seconds=2.0, clock=clock)
    store.times["alice"] = datetime.fromtimestamp(1_700_000_000.4, UTC)
    assert await guard.is_revoked({"identifier": "alice", "iat": 1_699_999_999})
    assert await guard.is_revoked({"identifier": "alice", "iat": 1_700_000_000})  # same second: cannot tell
    assert not await guard.is_revoked({"identifier": "alice", "iat": 1_700_000_001})
    assert await guard.is_revoked({"identifier": "alice"})  # no issue time at all
    assert not await guard.is_revoked({"identifier": "bob", "iat": 1})
    assert store.reads == 2  # one read per user while cached
    clock.now += 2.5
    store.fail = True
    with caplog.at_level(logging.WARNING, logger="test.sessions"):
        assert await guard.is_revoked({"identifier": "alice", "iat": 1_699_999_999})  # the last time known
        assert not await guard.is_revoked({"identifier": "bob", "iat": 1})
    assert len([r for r in caplog.records if "cannot read revocations" in r.message]) == 1
    store.fail = False
    await guard.revoke("bob", "logout")  # this instance's own revocation: no waiting for the cache
    assert await guard.is_revoked({"identifier": "bob", "iat": int(time.time()) - 1})


def test_token_claims_need_our_secret():
    import logging

    import jwt

    from chat.sessions import SessionGuard

    guard = SessionGuard(MemorySessions(), secret=lambda: "s" * 32, cookie_name="access_token",
                         logger=logging.getLogger("test"))
    ours = jwt.encode({"identifier": "alice", "iat": 1, "exp": time.time() + 60}, "s" * 32, algorithm="HS256")
    forged = jwt.encode({"identifier": "alice", "iat": 1, "exp": time.time() + 60}, "x" * 32, algorithm="HS256")
    assert guard.claims(ours)["identifier"] == "alice"
    assert guard.claims(forged) is None and guard.claims("not a token") is None
    assert guard.token_of({"access_token": ours}, None) == ours
    assert guard.token_of({"access_token_0": ours[:10], "access_token_1": ours[10:]}, None) == ours  # chunked
    assert guard.token_of({}, f"Bearer {ours}") == ours and guard.token_of({}, f"Basic {ours}") is None


def test_chainlit_reads_login_tokens_where_the_session_filter_looks():
    """chat/sessions.py drops revoked tokens from the cookie and the bearer header, the only
    places Chainlit 2.12 reads them (HTTP routes; the socket handshake: the cookie only). A
    Chainlit upgrade must re-check this: a token read from anywhere else would pass."""
    from importlib.metadata import version

    from chainlit.socket import _get_token

    assert version("chainlit") == "2.12.0", "re-check where this Chainlit reads login tokens (chat/sessions.py)"
    assert _get_token({"HTTP_COOKIE": "access_token=abc"}) == "abc"
    assert _get_token({"HTTP_AUTHORIZATION": "Bearer abc", "QUERY_STRING": "token=abc"}) is None


def test_origin_and_proxy_settings_refuse_what_they_cannot_mean():
    from settings import ConfigurationError, load_settings

    base = {"APP_DATA_DIR": "/tmp/unused", "CHAINLIT_AUTH_SECRET": "x" * 32}
    parsed = load_settings({**base, "APP_ALLOWED_ORIGINS": "https://Chat.Example.com, http://localhost:3000/",
                            "APP_TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1"}, dotenv=False)
    assert parsed.allowed_origins == ("https://chat.example.com", "http://localhost:3000")
    assert parsed.trusted_proxies == ("10.0.0.0/8", "127.0.0.1")
    assert load_settings(base, dotenv=False).session_lifetime_seconds == 15 * 24 * 3600
    for bad in ({"APP_ALLOWED_ORIGINS": "*"}, {"APP_ALLOWED_ORIGINS": "https://chat.example.com/app"},
                {"APP_ALLOWED_ORIGINS": "chat.example.com"}, {"APP_TRUSTED_PROXIES": "proxy.local"},
                {"APP_SESSION_LIFETIME_HOURS": "0"}, {"APP_LOGIN_MAX_FAILURES": "many"}):
        with pytest.raises(ConfigurationError):
            load_settings({**base, **bad}, dotenv=False)


def test_the_origin_rule_replaces_chainlits_cors_or_refuses_to_start():
    import logging

    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware

    from chat.web_security import CredentialedOriginsCORS, restrict_origins

    class FakeEngineIO:
        cors_allowed_origins: list = []

    class FakeSio:
        eio = FakeEngineIO()

    app = FastAPI()
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_credentials=True)
    restrict_origins(app, FakeSio(), [PARTNER], "/ws/socket.io", logging.getLogger("test"))
    cors = [m for m in app.user_middleware if issubclass(m.cls, CORSMiddleware)]
    assert [(m.cls, m.kwargs["allow_origins"]) for m in cors] == [(CredentialedOriginsCORS, [PARTNER])]
    with pytest.raises(RuntimeError):
        restrict_origins(FastAPI(), FakeSio(), [], "/ws/socket.io", logging.getLogger("test"))
