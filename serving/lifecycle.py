"""Follow the registry's `champion` alias and swap the served model atomically.

A background thread polls `MlflowClient.get_model_version_by_alias` (cheap) every
`poll_s` seconds. When the alias moves it loads that version's bundle through
`training.registry.load_champion_bundle` (which refuses files that differ from the digests
recorded at registration, and factors that are not finite), builds the whole `ServingModel`
(indexes and cold-start tower included; a tower that does not load refuses the version),
materialises the version's online keys, and only then swaps the one reference in
`ServingState`. Requests in flight keep the model they started with; a refused or failed
load leaves the old version serving and is reported by `/readyz` (`ServingState.load_error`).
The swapped-out model releases its bundle's temporary copy.

The indexes of a registered version come from (or, the first time, go to) the `indexes/`
artifact of that version's run: see `serving.index_artifacts` and `model_from_registry`.
Serving writes nothing else to the registry, and that only for a bundle whose files match
the digests recorded at registration.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

from mlflow import MlflowClient

from wenlv.serving.index_artifacts import indexes_for_version, registry_uri
from wenlv.serving.indexes import DEFAULT_CACHE, EXACT_BELOW
from wenlv.serving.materialize import materialize
from wenlv.serving.model import ServingModel
from wenlv.serving.state import ServingState
from wenlv.serving.towers import load_user_tower
from wenlv.training import digests, registry
from wenlv.training.bundle import ModelBundle

log = logging.getLogger(__name__)

MODEL_NAME = registry.MODEL_NAME
ALIAS = registry.ALIAS


def champion_version(tracking_uri: str | None = None, model_name: str = MODEL_NAME, alias: str = ALIAS):
    """The registered model version the alias points at (an mlflow ModelVersion)."""
    return MlflowClient(tracking_uri=registry_uri(tracking_uri)).get_model_version_by_alias(model_name, alias)


def load_champion(tracking_uri: str | None = None) -> tuple[ModelBundle, str]:
    """(bundle, version) of the champion, its files checked against the digests recorded at registration."""
    bundle, version = registry.load_champion_bundle(tracking_uri=registry_uri(tracking_uri))
    return bundle, str(version)


def model_from_registry(bundle: ModelBundle, version: str, store=None, *, tracking_uri: str | None = None,
                        model_name: str = MODEL_NAME, with_user_index: bool = True,
                        index_cache: Path | None = DEFAULT_CACHE, exact_below: int = EXACT_BELOW) -> ServingModel:
    """A registered version's ServingModel, its indexes read from (or first written to) the version's run.

    The bundle must be the one registered as `version` (its verified digests.json is the one
    recorded on the version); otherwise BundleIntegrityError, before any index is built or stored.
    """
    tracking_uri = registry_uri(tracking_uri)
    mv = MlflowClient(tracking_uri=tracking_uri).get_model_version(model_name, str(version))
    what = f"{model_name} version {version}"
    if bundle.digests is None:
        raise digests.BundleIntegrityError(f"{what}: the bundle was not loaded from checked files "
                                           f"(no {digests.MANIFEST}); {digests.REMEDY}")
    digests.check_registered(bundle.digests, mv.tags.get(digests.REGISTERED_TAG), what)
    tower = load_user_tower(bundle.towers_dir, bundle.factors)  # a broken tower refuses the version before any index
    indexes = indexes_for_version(bundle, str(version), mv.run_id, tracking_uri=tracking_uri,
                                  with_users=with_user_index, cache_dir=index_cache, exact_below=exact_below)
    return ServingModel(bundle, version, store, indexes, with_user_index=with_user_index, exact_below=exact_below,
                        tower=tower)


def _release(bundle) -> None:
    release = getattr(bundle, "release", None)
    if release is not None:
        release()


class ChampionFollower:
    """Poll the alias; on a move build the new model fully, then swap (one reference)."""

    def __init__(self, state: ServingState, *, tracking_uri: str | None = None, poll_s: float = 10.0,
                 build=None, materialize_on_swap: bool = True, on_swap=None,
                 version_source=None, loader=None):
        self.state, self.tracking_uri, self.poll_s = state, tracking_uri, poll_s
        self.build = build or (lambda bundle, version: model_from_registry(bundle, version, state.store,
                                                                           tracking_uri=self.tracking_uri))
        self.materialize_on_swap = materialize_on_swap
        self.on_swap = on_swap
        self.version_source = version_source or (lambda: str(champion_version(self.tracking_uri).version))
        self.loader = loader or (lambda: load_champion(self.tracking_uri))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None

    def _failed(self, version: str, exc: Exception, current, stage: str) -> bool:
        self.last_error = f"{type(exc).__name__}: {exc}"
        self.state.load_error = f"model version {version} was not loaded: {self.last_error}"
        self.state.count_load_failure("integrity" if isinstance(exc, digests.BundleIntegrityError) else stage)
        log.error("champion v%s could not be loaded; still serving %s: %s", version,
                  current.version if current else None, self.last_error)
        return False

    def check_once(self) -> bool:
        """Swap if the champion moved; True when a new version went live."""
        try:
            version = self.version_source()
        except Exception as exc:  # noqa: BLE001 - the registry may be briefly unreachable
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.warning("cannot read the champion alias: %s", self.last_error)
            return False
        current = self.state.model
        if current is not None and current.version == version:
            return False
        try:
            bundle, loaded_version = self.loader()
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            return self._failed(version, exc, current, "load")
        try:
            model = self.build(bundle, loaded_version)
        except Exception as exc:  # noqa: BLE001 - a refused or broken version never goes live
            _release(bundle)
            return self._failed(loaded_version, exc, current, "build")
        if self.materialize_on_swap and self.state.store is not None:
            self._materialize(bundle, loaded_version)
        previous = self.state.swap(model)
        self.last_error = self.state.load_error = None
        log.info("now serving model version %s (was %s)", model.version, previous.version if previous else None)
        if self.on_swap is not None:
            self.on_swap(model, previous)
        if previous is not None and previous is not model:
            previous.close()  # requests still holding it use in-memory arrays only
        return True

    def _materialize(self, bundle, version: str) -> None:
        """Write the new version's online keys first; if the store is down, serve from the bundle anyway."""
        raw = self.state.store.store
        try:
            if raw.materialized(version) is None:
                materialize(bundle, version, raw, progress=False)
        except Exception as exc:  # noqa: BLE001 - the model answers from its bundle meanwhile
            log.warning("could not materialise v%s (%s); serving it from the in-process bundle", version, type(exc).__name__)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.check_once()

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop polling and release the served bundle's temporary copy (the server is shutting down)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self.state.model is not None:
            self.state.model.close()
