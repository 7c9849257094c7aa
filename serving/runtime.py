"""Assemble a running service: store + model (bundle dir or MLflow champion) + keys → app,
and run it under uvicorn (one worker, uvloop + httptools), in the foreground or in a thread.
"""
from __future__ import annotations

import hashlib
import logging
import socket
import threading
import time
from pathlib import Path

import uvicorn

from wenlv.serving.app import create_app
from wenlv.serving.auth import KeyStore
from wenlv.serving.http_protocol import HeaderDeadlineProtocol
from wenlv.serving.lifecycle import ChampionFollower, load_champion, model_from_registry
from wenlv.serving.model import ServingModel
from wenlv.serving.online_store import DEFAULT_PREFIX, ResilientStore, open_store
from wenlv.serving.state import ServingState
from wenlv.training.bundle import ModelBundle
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)

# Requests still running this long after a stop signal are cancelled (then queued itineraries are dropped):
# waiting for every queued plan kept a stopped server alive for minutes.
SHUTDOWN_GRACE_S = 5.0


def bundle_version(bundle: ModelBundle, path: Path | None = None) -> str:
    """A bundle's version: its meta `version`, else a fingerprint of its metadata file."""
    if bundle.meta.get("version") not in (None, ""):
        return str(bundle.meta["version"])
    seed = (Path(path) / "bundle.json").read_bytes() if path else repr(sorted(bundle.meta.items())).encode()
    return "bundle-" + hashlib.sha256(seed).hexdigest()[:10]


def load_bundle_dir(path: Path) -> tuple[ModelBundle, str]:
    try:
        bundle = ModelBundle.load(path)
    except (FileNotFoundError, ValueError) as exc:
        raise WenlvError(str(exc)) from exc
    return bundle, bundle_version(bundle, path)


def build_app(*, bundle_dir: Path | None = None, tracking_uri: str | None = None, redis_url: str | None = None,
              sqlite_path: Path | None = None, prefix: str = DEFAULT_PREFIX, keys_path: Path | None = None,
              follow: bool = True, poll_s: float = 10.0, with_user_index: bool = True):
    """The app for a bundle directory (static) or for the champion (followed unless follow=False).

    A registered version's indexes are its MLflow run's `indexes/` artifact (uploaded by the
    first server that builds them); a bundle directory's are built or taken from the disk cache.
    """
    store = ResilientStore(open_store(redis_url, sqlite_path, prefix))

    def build(bundle, version):
        if bundle_dir is not None:  # no registry: indexes from the local disk cache or built
            return ServingModel(bundle, version, store, with_user_index=with_user_index)
        return model_from_registry(bundle, version, store, tracking_uri=tracking_uri, with_user_index=with_user_index)

    if bundle_dir is not None:
        bundle, version = load_bundle_dir(Path(bundle_dir))
        lifecycle = None
    else:
        try:
            bundle, version = load_champion(tracking_uri)
        except Exception as exc:  # noqa: BLE001 - the registry or alias may not exist yet
            raise WenlvError(f"cannot load the champion model from MLflow ({type(exc).__name__}: {exc}); "
                             "train and promote one, or serve a bundle with --bundle DIR") from exc
        lifecycle = None
    state = ServingState(store, build(bundle, version))
    if bundle_dir is None and follow:
        lifecycle = ChampionFollower(state, tracking_uri=tracking_uri, poll_s=poll_s, build=build)
    app = create_app(state, KeyStore(keys_path), lifecycle=lifecycle)
    return app


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def uvicorn_config(app, host: str, port: int):
    # access_log=False: uvicorn's access line carries the raw path, and with it the visitor's token;
    # serving.metrics logs each request by its route template instead (logger wenlv.serving.access).
    return uvicorn.Config(app, host=host, port=port, workers=1, loop="uvloop", http=HeaderDeadlineProtocol,
                          access_log=False, log_level="warning", lifespan="on",
                          timeout_graceful_shutdown=SHUTDOWN_GRACE_S)


class ServerThread:
    """uvicorn in a background thread (demo and tests): start() waits until it accepts requests."""

    def __init__(self, app, host: str = "127.0.0.1", port: int | None = None):
        self.host, self.port = host, port or free_port(host)
        self.server = uvicorn.Server(uvicorn_config(app, self.host, self.port))
        self.server.install_signal_handlers = lambda: None  # not the main thread
        self.thread = threading.Thread(target=self.server.run, name="wenlv-server", daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
