"""Reading a feature-block folder (spark_jobs → training) as pandas frames, checked.

Layout and manifest: docs/architecture.md; columns: `features.contracts.BLOCK_TABLES`.
A block that is missing, lacks a contract column, or disagrees with the manifest's row
count stops training with an error that names it: nothing is dropped silently.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.sparse import csr_matrix, hstack

from wenlv.features import contracts
from wenlv.errors import WenlvError
from wenlv.training.als_data import party_matrix

PARTIES = contracts.PARTIES


@dataclass
class FeatureBlocks:
    """Every block table of one feature folder, keyed `party/name`, plus the manifest."""

    root: Path
    manifest: dict
    tables: dict[str, pd.DataFrame]

    @classmethod
    def load(cls, root: str | Path) -> "FeatureBlocks":
        root = Path(root)
        manifest_file = root / "manifest.json"
        if not manifest_file.is_file():
            raise WenlvError(f"{root} is not a feature folder: {manifest_file.name} is missing (run `wenlv features`)")
        try:
            manifest = json.loads(manifest_file.read_text())
        except json.JSONDecodeError as exc:
            raise WenlvError(f"{manifest_file}: not valid JSON ({exc})") from exc
        tables = {}
        for table in contracts.BLOCK_TABLES:
            key = f"{table.party}/{table.name}"
            path = root / table.party / f"{table.name}.parquet"
            if not path.exists():
                raise WenlvError(f"{root}: feature block {key} is missing ({path.name})")
            frame = pd.read_parquet(path)
            missing = [c for c in table.columns if c not in frame.columns]
            if missing:
                raise WenlvError(f"{path}: block {key} lacks column(s) {missing}")
            expected = manifest.get("tables", {}).get(key, {}).get("rows")
            if expected is not None and int(expected) != len(frame):
                raise WenlvError(f"{path}: {len(frame)} rows but the manifest says {expected}")
            tables[key] = frame[table.columns].reset_index(drop=True)
        return cls(root=root, manifest=manifest, tables=tables)

    def __getitem__(self, key: str) -> pd.DataFrame:
        return self.tables[key]

    @property
    def users(self) -> pd.DataFrame:
        return self.tables["carrier/users"]

    def manifest_frame(self) -> pd.DataFrame:
        """The manifest's table list as a frame (the MLflow input dataset of a run)."""
        rows = [{"table": k, "party": v.get("party", k.split("/")[0]), "rows": int(v.get("rows", -1)),
                 "sha256": str(v.get("sha256", ""))} for k, v in sorted(self.manifest.get("tables", {}).items())]
        return pd.DataFrame(rows, columns=["table", "party", "rows", "sha256"])


@dataclass
class Matrices:
    """The aligned ALS inputs: one user axis (carrier/users order), one item block per party."""

    tokens: np.ndarray                 # [n_users] user token of each row
    is_prospect: np.ndarray            # [n_users] bool
    items: dict[str, np.ndarray]       # party -> item ids of its columns
    blocks: dict[str, csr_matrix]      # party -> [n_users, n_items(party)] confidence

    def stacked(self, parties) -> csr_matrix:
        return hstack([self.blocks[p] for p in parties], format="csr")

    def row_of(self) -> pd.Series:
        return pd.Series(np.arange(len(self.tokens)), index=self.tokens)


def build_matrices(blocks: FeatureBlocks) -> Matrices:
    """User × item confidence per party, every party's rows aligned on the users block
    (sorted tokens); each matrix is built and checked by training.als_data.party_matrix."""
    users = blocks.users.sort_values("token").reset_index(drop=True)
    if users["token"].duplicated().any():
        raise WenlvError("carrier/users: duplicate tokens")
    tokens = users["token"].to_numpy(str)
    pois = blocks["tourism/poi_features"]["poi_id"]
    items, mats = {}, {}
    for party in PARTIES:
        frame = blocks[f"{party}/{contracts.INTERACTION_TABLE[party].name}"]
        block = party_matrix(frame, party, tokens, pois if party == "tourism" else None)
        items[party], mats[party] = block.items, block.matrix
    return Matrices(tokens=users["token"].to_numpy(), is_prospect=users["is_prospect"].to_numpy(bool),
                    items=items, blocks=mats)
