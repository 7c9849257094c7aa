"""`wenlv party serve` as a real OS process on loopback, for tests that drive party services.

One helper for every such test (tests/test_remote_pipeline.py, tests/test_party_features.py):
it picks a free port, starts the service with the worktree on the path and one BLAS thread,
waits for its "listening" line (bounded), and stops it with SIGTERM (then SIGKILL).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from wenlv.bench.party_procs import stop_process, wait_listening
from wenlv.serving.runtime import free_port

ROOT = Path(__file__).resolve().parents[2]


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
        self.ready = wait_listening(self.proc, party, log, timeout, self.stop)

    def stop(self) -> None:
        stop_process(self.proc, 30)


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
