"""A private PostgreSQL cluster for fault tests: its own data folder and port, so it can be
restarted (or crashed) without touching the machine's shared server."""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from wenlv.serving.runtime import free_port


def server_bindir() -> Path:
    found = shutil.which("initdb")
    if found:
        return Path(found).parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not candidates:
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install -y postgresql")
    return Path(candidates[-1]).parent


class PrivatePostgres:
    """initdb + pg_ctl on 127.0.0.1:<free port>; run as the `postgres` user when we are root (initdb refuses root)."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.bindir = server_bindir()
        self.root = Path(tempfile.mkdtemp(prefix="wenlv-pg-"))
        self.data = self.root / "data"
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if self.user:
            cmd = ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=120)

    def start(self) -> "PrivatePostgres":
        if not self.data.exists():
            if self.user:
                pw = pwd.getpwnam(self.user)
                os.chown(self.root, pw.pw_uid, pw.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        self._run("pg_ctl", "-D", str(self.data), "-w", "-t", "60", "-l", str(self.root / "server.log"),
                  "-o", f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.root} -c fsync=on", "start")
        self.wait_ready()
        return self

    def wait_ready(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=1).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"private PostgreSQL on port {self.port} did not come up") from None
                time.sleep(0.1)

    def stop(self, mode: str = "fast") -> None:
        """`fast` is a clean shutdown; `immediate` is a crash (recovery from the WAL at the next start)."""
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def destroy(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.destroy()
