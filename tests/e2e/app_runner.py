"""Start the real app (`python -m chainlit run app.py --headless`) on a free loopback port
with its own data folder, and stop it again. Used by the end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# Settings of the developer's shell that must not leak into the app under test.
APP_ENV_PREFIXES = ("OAUTH_", "APP_", "LLM_", "OPENAI_", "CHAT_", "CHAINLIT_", "DATABASE_", "STORAGE_", "KNOWLEDGE_")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningApp:
    def __init__(self, tmp: Path, database_url: str, llm_url: str | None, **extra_env: str):
        self.tmp = tmp
        self.database_url = database_url
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp / "chainlit.log"
        # Not CI either: `chainlit run` sees CI=true and exports a fake OPENAI_API_KEY.
        env = {k: v for k, v in os.environ.items() if not k.startswith(APP_ENV_PREFIXES) and k != "CI"}
        env.update(
            {
                "APP_DATA_DIR": str(tmp / "data"),
                "DATABASE_URL": database_url,
                "STORAGE_URL": (tmp / "files").as_uri(),
            }
        )
        if llm_url:
            env.update(
                {
                    "OPENAI_BASE_URL": llm_url,
                    "OPENAI_API_KEY": "sk-e2e",
                    "LLM_MODEL": "test-model",
                    "LLM_MAX_RETRIES": "0",
                    "LLM_TIMEOUT_SECONDS": "20",
                }
            )
        else:
            # Offline, the app would load the local embedding model (the dev extras install it):
            # seconds of CPU per start that only the knowledge tests need, and they ask for it.
            env["KNOWLEDGE_EMBEDDINGS"] = "none"
        env.update(extra_env)
        self.env = env
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chainlit", "run", "app.py", "--headless", "--host", "127.0.0.1", "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 90) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the app exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                if httpx.get(f"{self.url}/auth/config", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise AssertionError(f"the app did not start in {timeout}s:\n{self.log_text()}")

    def admin_password(self) -> str:
        """What the README tells a person on a fresh machine: the generated first password."""
        text = (self.tmp / "data" / "admin_password.txt").read_text()
        assert text.startswith("user: admin\n"), text
        password = text.split("password: ", 1)[1].strip()
        assert password in self.log_text()  # also printed once on the console
        return password

    async def add_user(self, name: str, password: str) -> None:
        """`python -m chat.users add` while the app runs: logins read the users file afresh."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "chat.users", "add", name, "--password-stdin",
            cwd=ROOT, env=self.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        out, _ = await proc.communicate(f"{password}\n".encode())
        assert proc.returncode == 0, out.decode()

    def log_text(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")[-6000:]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.log.close()
