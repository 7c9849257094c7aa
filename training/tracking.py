"""MLflow tracking: where the store is, and logging one training run (DESIGN §6).

Store: `MLFLOW_TRACKING_URI` if set; otherwise an embedded SQLite store
`sqlite:///<repo>/mlflow/mlflow.db` with artifacts under `<repo>/mlflow/artifacts`, where
<repo> is the checkout holding `mlflow/MLproject` beside the packages; an installed copy
without a checkout uses `~/.wenlv/mlflow`. The registry lives in the same store.

MLflow metric names may not contain `@`: `ndcg@10` is logged as `ndcg_at_10`
(`mlflow_name` / `wenlv_name` convert).
"""
from __future__ import annotations

import json
import logging
import math
import time
import warnings
from pathlib import Path

import numpy as np

from wenlv.settings import get_settings

log = logging.getLogger(__name__)

EXPERIMENT = "wenlv"
REPO_ROOT = Path(__file__).resolve().parents[1]


def default_store_dir() -> Path:
    if (REPO_ROOT / "mlflow" / "MLproject").is_file():
        return REPO_ROOT / "mlflow"
    return Path.home() / ".wenlv" / "mlflow"


def store_for_dir(folder: str | Path) -> tuple[str, str]:
    """(tracking URI, artifact root URI) of an embedded SQLite store in `folder`."""
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}", (folder / "artifacts").as_uri()


def resolve_tracking_uri(tracking_uri: str | None = None, store_dir: str | Path | None = None) -> str:
    """Explicit URI, else MLFLOW_TRACKING_URI, else the SQLite store in `store_dir` or the default one."""
    if tracking_uri:
        return tracking_uri
    configured = get_settings().mlflow_tracking_uri
    if configured:
        return configured
    return store_for_dir(store_dir or default_store_dir())[0]


def _artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside an embedded SQLite store (None: the server decides)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///"):]).parent / "artifacts").resolve().as_uri()
    return None


def client(tracking_uri: str | None = None):
    from mlflow import MlflowClient  # lazy: mlflow imports in seconds; resolving the URI (serving, CLI) needs none

    uri = resolve_tracking_uri(tracking_uri)
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(c, name: str = EXPERIMENT) -> str:
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    return c.create_experiment(name, artifact_location=_artifact_root(c.tracking_uri))


def mlflow_name(name: str) -> str:
    return name.replace("@", "_at_")


def wenlv_name(name: str) -> str:
    return name.replace("_at_", "@")


def _param_value(v) -> str:
    return json.dumps(v) if isinstance(v, (list, dict, tuple)) else str(v)


def log_run(*, params: dict, metrics: dict, tags: dict, artifacts: dict, manifest_frame=None,
            features_dir: str | None = None, tracking_uri: str | None = None, run_name: str | None = None,
            steps: dict | None = None, dataset_context: str = "training") -> dict:
    """One finished run: params, finite metrics, tags, the feature manifest as input, artifact folders.

    artifacts: {artifact path in the run: local folder or file}. steps: curves, {metric: [(step, value)]}
    (MLflow's metric history). Returns run id and artifact URI.
    """
    import mlflow  # lazy: mlflow imports in seconds; resolving the URI (serving, CLI) needs none
    from mlflow.entities import DatasetInput, InputTag, Metric, Param

    c = client(tracking_uri)
    run = c.create_run(experiment_id(c), run_name=run_name, tags={k: str(v) for k, v in tags.items()})
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        metric_list = [Metric(mlflow_name(k), float(v), now, 0) for k, v in metrics.items()
                       if isinstance(v, (int, float, np.integer, np.floating)) and math.isfinite(float(v))]
        metric_list += [Metric(mlflow_name(k), float(v), now, int(step)) for k, points in (steps or {}).items()
                        for step, v in points if math.isfinite(float(v))]
        param_list = [Param(mlflow_name(k), _param_value(v)[:6000]) for k, v in params.items() if v is not None]
        for start in range(0, max(len(metric_list), len(param_list)), 100):
            c.log_batch(run_id, metrics=metric_list[start:start + 100], params=param_list[start:start + 100])
        if manifest_frame is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dataset = mlflow.data.from_pandas(manifest_frame.astype({"rows": "float64"}),
                                                  source=str(features_dir or "features"), name="feature-blocks")
            c.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                        tags=[InputTag("mlflow.data.context", dataset_context)])])
        for path, local in artifacts.items():
            local = Path(local)
            if local.is_dir():
                c.log_artifacts(run_id, str(local), path or None)
            else:
                c.log_artifact(run_id, str(local), path or None)
        c.set_tag(run_id, "wenlv.logged", "complete")
        c.set_terminated(run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    return {"run_id": run_id, "artifact_uri": c.get_run(run_id).info.artifact_uri, "tracking_uri": c.tracking_uri}


def run_metrics(c, run_id: str) -> dict:
    return {wenlv_name(k): v for k, v in c.get_run(run_id).data.metrics.items()}
