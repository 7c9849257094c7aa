"""Party services as separate OS processes, each in its own network namespace and Unix user.

Used by `bench wan` and the namespace integration test (tests/test_party_namespaces.py). Each party gets a folder that only
its own uid can read (mode 0700): a copy of its own feature block plus the shared user
token list, its TLS key and certificate, and the pinned coordinator certificate.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wenlv.privacy import tls

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the party processes import this code
FIRST_UID = 23170  # numeric ids with no passwd entry: nothing on the machine owns files as them


def party_folders(features: Path, base: Path, parties, certs: Path) -> dict[str, Path]:
    """<base>/<party>/{features/<party>, features/carrier/users.parquet, tls/} owned by the party's uid."""
    base.mkdir(parents=True, exist_ok=True)
    base.chmod(0o711)  # others may traverse to their own folder, not list the base
    out = {}
    for k, party in enumerate(parties):
        uid = FIRST_UID + k
        home = base / party
        if home.exists():
            shutil.rmtree(home)
        view = home / "features"
        (view / "carrier").mkdir(parents=True)
        shutil.copytree(features / party, view / party, dirs_exist_ok=True)
        if party != "carrier":  # the carrier's own block already holds the user token list
            _copy_users(features, view)
        (home / "tls").mkdir()
        for name in (f"{party}.pem", f"{party}.key", f"{tls.COORDINATOR}.pem"):
            shutil.copy(certs / name, home / "tls" / name)
        for d in ("state", "home", "numba"):
            (home / d).mkdir()
        for path in [home, *home.rglob("*")]:
            os.chown(path, uid, uid)
        home.chmod(0o700)
        out[party] = home
    return out


def _copy_users(features: Path, view: Path) -> None:
    src = features / "carrier" / "users.parquet"
    dest = view / "carrier" / "users.parquet"
    if src.is_dir():
        shutil.copytree(src, dest)
    else:
        shutil.copy(src, dest)


def _interpreter_visible() -> str:
    """Shell lines that let an unprivileged uid run this interpreter when it lives in a private
    home (e.g. pyenv under /root, mode 0700): in the process's own mount namespace only, the home
    is covered by an empty tmpfs with just the interpreter's tree bound back in. Nothing changes
    outside that namespace; the party sees none of root's other files."""
    prefix = Path(sys.base_prefix).resolve()
    home = Path("/root")
    if not prefix.is_relative_to(home):
        return ""
    top = home / prefix.relative_to(home).parts[0]          # e.g. /root/.pyenv
    hold = Path(tempfile.mkdtemp(prefix="wl-interp-"))      # a mount point of our own, removed at exit
    atexit.register(lambda: shutil.rmtree(hold, ignore_errors=True))
    return (f"mount --bind {top} {hold} && mount -t tmpfs -o mode=0755,size=1m tmpfs {home} && "
            f"mkdir -p {top} && mount --move {hold} {top} && ")


def wait_listening(proc: subprocess.Popen, party: str, log: Path, timeout: float, stop) -> dict:
    """The JSON "listening" line `wenlv party serve` prints once it accepts connections (bounded wait);
    on failure `stop()` and an error carrying the end of the party's log."""
    deadline, line = time.monotonic() + timeout, b""
    while time.monotonic() < deadline and proc.poll() is None:
        if select.select([proc.stdout], [], [], 1.0)[0]:
            line = proc.stdout.readline()
            if b"listening" in line:
                break
    if b"listening" not in line:
        stop()
        raise RuntimeError(f"party {party} did not start: {line!r} {log.read_text(errors='replace')[-3000:]}")
    return json.loads(line)


def stop_process(proc: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout` s; the stdout pipe closed."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    if proc.stdout:
        proc.stdout.close()


class PartyProcess:
    """`wenlv party serve` for one party in its namespace as its own uid; waits until it listens."""

    def __init__(self, topo, party: str, home: Path, uid: int, port: int = 8443, timeout: float = 120.0):
        self.party, self.home, self.uid = party, home, uid
        self.url = f"https://{topo.addr[party]}:{port}"
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1",
               "HOME": str(home / "home"), "NUMBA_CACHE_DIR": str(home / "numba"), "LANG": "C.UTF-8"}
        serve = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                 "env", "-i", *[f"{k}={v}" for k, v in env.items()],
                 sys.executable, "-m", "wenlv.cli", "party", "serve", "--party", party,
                 "--data", str(home / "features"), "--listen", f"{topo.addr[party]}:{port}",
                 "--tls", str(home / "tls"), "--state", str(home / "state")]
        cmd = [*topo.exec_prefix(party), "unshare", "-m", "--propagation", "private",
               "sh", "-c", _interpreter_visible() + 'exec "$@"', "sh", *serve]
        self.log = home.parent / f"{party}.log"  # beside its folder (root's): a pipe left unread could fill up
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=home, stdout=subprocess.PIPE, stderr=log)
        self.listening = wait_listening(self.proc, party, self.log, timeout, self.stop)

    @property
    def pid(self) -> int:
        return self.proc.pid  # ip netns exec, setpriv and env exec in place: the pid is the server's

    def open_paths(self) -> set[str]:
        """The files this process has open now (/proc/<pid>/fd)."""
        out = set()
        fd_dir = Path(f"/proc/{self.pid}/fd")
        try:
            for fd in fd_dir.iterdir():
                try:
                    out.add(os.readlink(fd))
                except OSError:
                    continue
        except OSError:
            pass
        return out

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        stop_process(self.proc, 15)
