"""A private redis-server for the serving benchmark and the tests that stop and restart Redis.

`PrivateRedis` starts its own redis-server on a free port (never the shared one), so a
test can stop and restart it during requests.
"""
from __future__ import annotations

import shutil
import subprocess
import time

import redis

from wenlv.serving.runtime import free_port


class PrivateRedis:
    def __init__(self, port: int | None = None, persist_dir: str | None = None):
        """`persist_dir`: keep an append-only file there (fsync every second), so a restart keeps the data, as a
        production Redis would; without it the server keeps nothing on disk."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install -y redis-server)")
        self.port = port or free_port()
        self.persist_dir = persist_dir
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        persistence = (["--appendonly", "yes", "--appendfsync", "everysec", "--dir", str(self.persist_dir)]
                       if self.persist_dir else ["--appendonly", "no"])
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      *persistence], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    self.stop()  # a server that started but never answered is not left behind
                    raise RuntimeError(f"redis-server on port {self.port} did not start")
                time.sleep(0.05)

    def stop(self) -> None:
        """Stop the server: SIGTERM, and SIGKILL if it has not exited within 10 s (a busy machine)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
