"""Follow the registry's `champion` alias and swap the served model atomically.

A background thread polls `MlflowClient.get_model_version_by_alias` (cheap) every
`poll_s` seconds. When the alias moves it loads that version's bundle (through
`training.registry.load_champion_bundle` when it exists, else the `bundle/` artifact of
the version's run), builds the whole `ServingModel` (indexes included), materialises the
version's online keys, and only then swaps the one reference in `ServingState`. Requests
in flight keep the model they started with; a failed load leaves the old version serving.

The indexes of a registered version come from (or, the first time, go to) the `indexes/`
artifact of that version's run: see `serving.index_artifacts` and `model_from_registry`.
"""
from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path

from wenlv.serving.indexes import DEFAULT_CACHE, EXACT_BELOW
from wenlv.serving.model import ServingModel
from wenlv.serving.state import ServingState
from wenlv.training.bundle import ModelBundle

log = logging.getLogger(__name__)

MODEL_NAME = "wenlv-recommender"
ALIAS = "champion"


def champion_version(tracking_uri: str | None = None, model_name: str = MODEL_NAME, alias: str = ALIAS):
    """The registered model version the alias points at (an mlflow ModelVersion)."""
    from mlflow import MlflowClient

    from wenlv.serving.index_artifacts import registry_uri

    return MlflowClient(tracking_uri=registry_uri(tracking_uri)).get_model_version_by_alias(model_name, alias)


def load_champion(tracking_uri: str | None = None, model_name: str = MODEL_NAME, alias: str = ALIAS) -> tuple[ModelBundle, str]:
    """(bundle, version) of the champion: via training.registry if present, else the run's bundle/ artifact."""
    try:
        from wenlv.training.registry import load_champion_bundle
    except ModuleNotFoundError as exc:
        if exc.name != "wenlv.training.registry":
            raise
        load_champion_bundle = None
    if load_champion_bundle is not None and model_name == MODEL_NAME and alias == ALIAS:
        bundle, version = load_champion_bundle(tracking_uri=tracking_uri)
        return bundle, str(version)
    import mlflow

    from wenlv.serving.index_artifacts import registry_uri

    tracking_uri = registry_uri(tracking_uri)
    mv = champion_version(tracking_uri, model_name, alias)
    dst = Path(tempfile.mkdtemp(prefix=f"wenlv-champion-v{mv.version}-"))
    path = mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="bundle", dst_path=str(dst),
                                               tracking_uri=tracking_uri)
    return ModelBundle.load(path), str(mv.version)


def model_from_registry(bundle: ModelBundle, version: str, store=None, *, tracking_uri: str | None = None,
                        model_name: str = MODEL_NAME, with_user_index: bool = True,
                        index_cache: Path | None = DEFAULT_CACHE, exact_below: int = EXACT_BELOW) -> ServingModel:
    """A registered version's ServingModel, its indexes read from (or first written to) the version's run."""
    from wenlv.serving.index_artifacts import indexes_for_version, version_run_id

    run_id = version_run_id(version, tracking_uri=tracking_uri, model_name=model_name)
    indexes = indexes_for_version(bundle, str(version), run_id, tracking_uri=tracking_uri, with_users=with_user_index,
                                  cache_dir=index_cache, exact_below=exact_below)
    return ServingModel(bundle, version, store, indexes, with_user_index=with_user_index, exact_below=exact_below)


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
            model = self.build(bundle, loaded_version)
        except Exception as exc:  # noqa: BLE001 - keep serving the old version
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.error("champion v%s could not be loaded; still serving %s: %s", version,
                      current.version if current else None, self.last_error)
            return False
        if self.materialize_on_swap and self.state.store is not None:
            self._materialize(bundle, loaded_version)
        self.state.swap(model)
        log.info("now serving model version %s (was %s)", model.version, current.version if current else None)
        if self.on_swap is not None:
            self.on_swap(model, current)
        return True

    def _materialize(self, bundle, version: str) -> None:
        """Write the new version's online keys first; if the store is down, serve from the bundle anyway."""
        from wenlv.serving.materialize import materialize

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
            self._thread = threading.Thread(target=self._run, name="champion-follower", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
