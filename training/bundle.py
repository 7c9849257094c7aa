"""The model bundle: everything serving needs from one trained model version, as one folder.

Training writes it and logs it as the MLflow artifact `bundle/` of the run that the
registered version points at; serving downloads it for the `champion` alias. Only
pseudonymous tokens and POI ids appear here: no phone number, no raw party statistic.

Layout:
    bundle.json          metadata (version, factors, parties, metrics, created_at)
    pois.parquet         poi_id, name, category, city, lat, lon, open_time, close_time,
                         visit_minutes, price_cny, popularity (row i ↔ poi_factors[i])
    poi_factors.npy      float32 [n_pois, f]  item factors of the tourism party's POI block
    users.parquet        token, is_prospect   (row j ↔ user_factors[j])
    user_factors.npy     float32 [n_users, f]
    history.parquet      token, poi_id        training-window visits (for exclusion, reasons)
    towers/              optional cold-start towers (TorchScript) and their feature spec
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

BUNDLE_FORMAT = 1


@dataclass
class ModelBundle:
    pois: pd.DataFrame
    poi_factors: np.ndarray
    users: pd.DataFrame
    user_factors: np.ndarray
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)
    towers_dir: Path | None = None

    def __post_init__(self):
        if len(self.pois) != len(self.poi_factors):
            raise ValueError(f"bundle: {len(self.pois)} POIs but {len(self.poi_factors)} POI factor rows")
        if len(self.users) != len(self.user_factors):
            raise ValueError(f"bundle: {len(self.users)} users but {len(self.user_factors)} user factor rows")
        if self.poi_factors.ndim != 2 or self.user_factors.ndim != 2:
            raise ValueError("bundle: factors must be 2-D arrays")
        if self.poi_factors.shape[1] != self.user_factors.shape[1]:
            raise ValueError("bundle: POI and user factors differ in width")

    @property
    def factors(self) -> int:
        return int(self.poi_factors.shape[1])

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.pois.to_parquet(path / "pois.parquet", index=False)
        self.users.to_parquet(path / "users.parquet", index=False)
        self.history.to_parquet(path / "history.parquet", index=False)
        np.save(path / "poi_factors.npy", np.ascontiguousarray(self.poi_factors, dtype=np.float32))
        np.save(path / "user_factors.npy", np.ascontiguousarray(self.user_factors, dtype=np.float32))
        meta = {"format": BUNDLE_FORMAT, "factors": self.factors, "n_pois": len(self.pois),
                "n_users": len(self.users), **self.meta}
        (path / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
        if self.towers_dir is not None and Path(self.towers_dir).resolve() != (path / "towers").resolve():
            import shutil

            shutil.copytree(self.towers_dir, path / "towers", dirs_exist_ok=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        path = Path(path)
        meta_file = path / "bundle.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{path} is not a model bundle (no bundle.json)")
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: bundle format {meta.get('format')} is not {BUNDLE_FORMAT}")
        towers = path / "towers"
        return cls(
            pois=pd.read_parquet(path / "pois.parquet"),
            poi_factors=np.load(path / "poi_factors.npy"),
            users=pd.read_parquet(path / "users.parquet"),
            user_factors=np.load(path / "user_factors.npy"),
            history=pd.read_parquet(path / "history.parquet"),
            meta=meta,
            towers_dir=towers if towers.exists() else None,
        )
