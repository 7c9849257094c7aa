"""`wenlv party serve` as a real OS process on loopback, for tests that drive party services.

One helper for every such test (tests/test_remote_pipeline.py, tests/test_party_features.py):
it picks a free port, starts the service with the worktree on the path and one BLAS thread,
waits for its "listening" line (bounded), and stops it with SIGTERM (then SIGKILL).
"""
from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PartyProcess:
    """One party's service. `raw`: serve its feature run too (``--raw``, one Spark core);
    `state`: where it keeps its item factors and towers; `cwd`: its working directory."""

    def __init__(self, party: str, data: Path, certs: Path, log: Path, *, raw: Path | None = None,
                 state: Path | None = None, cwd: Path | None = None, timeout: float = 180.0):
        self.party = party
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1", "WENLV_SHUFFLE_PARTITIONS": "2"}
        cmd = [sys.executable, "-m", "wenlv.cli", "party", "serve", "--party", party, "--data", str(data),
               "--listen", f"127.0.0.1:{self.port}", "--tls", str(certs)]
        if raw is not None:
            cmd += ["--raw", str(raw), "--master", "local[1]"]
        if state is not None:
            cmd += ["--state", str(state)]
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=cwd)
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if b"listening" in line:
                    break
        if b"listening" not in line:
            self.stop()
            raise RuntimeError(f"party {party} did not start: {log.read_text(errors='replace')[-3000:]}")
        self.ready = json.loads(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc.stdout.close()


class PartyProcesses(dict):
    """{party: PartyProcess}, every one stopped on leaving the block (also when one fails to start)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        for service in self.values():
            service.stop()

    def urls(self) -> str:
        """The ``--parties`` argument: ``tourism=https://…,carrier=…``."""
        return ",".join(f"{p}={s.url}" for p, s in self.items())
