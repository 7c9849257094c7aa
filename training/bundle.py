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
    digests.json         sha256 of every other file (training.digests), written last by `save`

`load` refuses a bundle whose files do not match digests.json (or that has none), and one
whose factors are not finite or exceed `FACTOR_BOUND` in magnitude.

A bundle loaded from a temporary copy (a registry download) owns that folder: `release()`
removes it, and so does garbage collection or interpreter exit, whichever comes first.
"""
from __future__ import annotations

import json
import shutil
import weakref
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from wenlv.training import digests
from wenlv.staging import staged_folder

BUNDLE_FORMAT = 1

# Largest factor magnitude a bundle may hold. Serving computes float32 dot products, norms
# (sums of f squares) and means of factor rows; with |x| <= 1e6 and up to 1e4 factors every
# such sum stays below 1e4 * 1e6 * 1e6 = 1e16, twenty-two orders below float32's 3.4e38, so no
# score can overflow to inf (3e38 user factors did, and every personalised request failed).
# Implicit-feedback ALS predicts preferences in [0, 1] with L2 regularisation, so trained
# factors are O(1): the bound is six orders above any legitimate value.
FACTOR_BOUND = 1e6


def check_factors(name: str, factors: np.ndarray) -> None:
    """Refuse factors that are not finite or exceed FACTOR_BOUND (they would break or dominate every score)."""
    finite = np.isfinite(factors)
    if not finite.all():
        row = int(np.argwhere(~finite)[0][0])
        raise digests.BundleIntegrityError(f"{name}: {int((~finite).sum())} values are NaN or infinite "
                                           f"(first in row {row})")
    peak = float(np.abs(factors).max()) if factors.size else 0.0
    if peak > FACTOR_BOUND:
        row = int(np.argwhere(np.abs(factors) > FACTOR_BOUND)[0][0])
        raise digests.BundleIntegrityError(f"{name}: a value of magnitude {peak:.3g} (row {row}) exceeds the "
                                           f"bound {FACTOR_BOUND:g} for trained factors")


@dataclass
class ModelBundle:
    pois: pd.DataFrame
    poi_factors: np.ndarray
    users: pd.DataFrame
    user_factors: np.ndarray
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)
    towers_dir: Path | None = None
    digests: dict | None = None  # the digests.json this bundle was saved with or verified against

    def __post_init__(self):
        if len(self.pois) != len(self.poi_factors):
            raise ValueError(f"bundle: {len(self.pois)} POIs but {len(self.poi_factors)} POI factor rows")
        if len(self.users) != len(self.user_factors):
            raise ValueError(f"bundle: {len(self.users)} users but {len(self.user_factors)} user factor rows")
        if self.poi_factors.ndim != 2 or self.user_factors.ndim != 2:
            raise ValueError("bundle: factors must be 2-D arrays")
        if self.poi_factors.shape[1] != self.user_factors.shape[1]:
            raise ValueError("bundle: POI and user factors differ in width")
        check_factors("poi_factors", self.poi_factors)
        check_factors("user_factors", self.user_factors)
        self._release = None

    @property
    def factors(self) -> int:
        return int(self.poi_factors.shape[1])

    def save(self, path: str | Path) -> Path:
        """Write the bundle to `path`, replacing what was there only once every file is written."""
        path = Path(path)
        with staged_folder(path) as staging:
            self.pois.to_parquet(staging / "pois.parquet", index=False)
            self.users.to_parquet(staging / "users.parquet", index=False)
            self.history.to_parquet(staging / "history.parquet", index=False)
            np.save(staging / "poi_factors.npy", np.ascontiguousarray(self.poi_factors, dtype=np.float32))
            np.save(staging / "user_factors.npy", np.ascontiguousarray(self.user_factors, dtype=np.float32))
            meta = {"format": BUNDLE_FORMAT, "factors": self.factors, "n_pois": len(self.pois),
                    "n_users": len(self.users), **self.meta}
            (staging / "bundle.json").write_text(json.dumps(meta, indent=2, default=str))
            if self.towers_dir is not None:
                shutil.copytree(self.towers_dir, staging / "towers")
            manifest = digests.write_manifest(staging)
        if self.towers_dir is not None and Path(self.towers_dir).resolve().parent == path.resolve():
            self.towers_dir = path / "towers"  # the old folder it pointed at was just replaced
        self.digests = manifest
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelBundle":
        """The bundle in `path`, once its files match digests.json and its factors are sane."""
        path = Path(path)
        meta_file = path / "bundle.json"
        if not meta_file.exists():
            raise FileNotFoundError(f"{path} is not a model bundle (no bundle.json)")
        manifest = digests.verify_folder(path)
        meta = json.loads(meta_file.read_text())
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"{path}: bundle format {meta.get('format')} is not {BUNDLE_FORMAT}")
        towers = path / "towers"
        bundle = cls(
            pois=pd.read_parquet(path / "pois.parquet"),
            poi_factors=np.load(path / "poi_factors.npy"),
            users=pd.read_parquet(path / "users.parquet"),
            user_factors=np.load(path / "user_factors.npy"),
            history=pd.read_parquet(path / "history.parquet"),
            meta=meta,
            towers_dir=towers if towers.exists() else None,
            digests=manifest,
        )
        return bundle

    def own_folder(self, folder: str | Path) -> None:
        """Remove `folder` (a temporary copy this bundle was loaded from) on release, collection or exit."""
        self._release = weakref.finalize(self, shutil.rmtree, str(folder), True)

    def release(self) -> None:
        """Remove the temporary folder this bundle owns, if any (its arrays stay in memory)."""
        if self._release is not None:
            self._release()
