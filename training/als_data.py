"""Each party's ALS input from its own feature folder: a users × own-items confidence matrix.

A party reads only ``<features>/<party>/…`` plus the shared user universe
(``carrier/users``: PSI tokens, no personal data), never another party's block — so the
same function runs inside a party's own process in a federated run. Rows follow the
sorted token order (as ``training.blocks.build_matrices``), so every party's rows line up.
Tourism's columns are every POI of ``tourism/poi_features`` (POIs nobody visited included),
the others' columns are the items seen in their block; all sorted.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from wenlv.features import contracts
from wenlv.errors import WenlvError


@dataclass
class PartyBlock:
    party: str
    items: np.ndarray            # item id of each column
    matrix: sp.csr_matrix        # [n_users, n_items] float32 confidence


def _read(features: Path, table: contracts.Table, columns: list[str]) -> pd.DataFrame:
    path = features / table.party / f"{table.name}.parquet"  # a file, or a folder of parts as Spark writes it
    if not path.exists():
        raise WenlvError(f"{features}: feature block {table.party}/{table.name} is missing ({path})")
    frame = pd.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise WenlvError(f"{path}: lacks column(s) {missing}")
    return frame[columns]


def load_users(features: str | Path) -> np.ndarray:
    """The shared user axis: sorted PSI tokens of ``carrier/users``."""
    users = _read(Path(features), contracts.USERS, ["token"])
    if users["token"].isna().any():
        raise WenlvError("carrier/users: null token")
    if users["token"].duplicated().any():
        raise WenlvError("carrier/users: duplicate tokens")
    return np.sort(users["token"].to_numpy(str))


def load_user_features(features: str | Path, party: str) -> pd.DataFrame:
    """One party's side features (``<party>/user_features``: token + the contract's columns), from its
    own folder only (the bottom tower's input, training.remote_towers)."""
    try:
        table = contracts.table(f"{party}.user_features")
    except KeyError:
        raise WenlvError(f"party {party!r} has no side features for a bottom tower") from None
    return _read(Path(features), table, list(table.columns))


def party_matrix(frame: pd.DataFrame, party: str, tokens: np.ndarray, poi_ids=None) -> PartyBlock:
    """One party's users × items confidence matrix from its interaction rows, checked.

    ``tokens``: the sorted user axis (:func:`load_users`). ``poi_ids``: every POI of
    ``tourism/poi_features`` (the tourism party's columns, visited or not). The one place
    interaction rows become a matrix: the in-process pipeline (training.blocks) and a
    party's own process (this module's loaders) both go through it.
    """
    if party not in contracts.INTERACTION_TABLE:
        raise WenlvError(f"unknown party {party!r}; known: {', '.join(contracts.PARTIES)}")
    table = contracts.INTERACTION_TABLE[party]
    col = contracts.ITEM_COLUMN[party]
    where = f"{party}/{table.name}"
    if frame[["token", col]].isna().any().any():
        raise WenlvError(f"{where}: null token or {col}")
    dup = frame.duplicated(["token", col]).to_numpy()
    if dup.any():
        raise WenlvError(f"{where}: {int(dup.sum())} duplicate (token, {col}) rows, first at row {int(np.argmax(dup))}")
    conf = frame["confidence"].to_numpy(np.float64)
    bad = ~np.isfinite(conf) | (conf <= 0)
    if bad.any():
        raise WenlvError(f"{where}: row {int(np.argmax(bad))}, column 'confidence': must be positive and finite")
    row = np.searchsorted(tokens, frame["token"].to_numpy(str))
    row = np.minimum(row, len(tokens) - 1)
    unknown = tokens[row] != frame["token"].to_numpy(str) if len(tokens) else np.ones(len(frame), bool)
    if unknown.any():
        raise WenlvError(f"{where}: {int(unknown.sum())} rows have a token not in carrier/users "
                         f"(first at row {int(np.argmax(unknown))})")
    if party == "tourism":
        if poi_ids is None:
            raise WenlvError("the tourism matrix needs the POI ids of tourism/poi_features")
        items = np.sort(pd.unique(np.asarray(poi_ids).astype(str)))
    else:
        items = np.sort(frame[col].unique().astype(str))
    values = frame[col].to_numpy(str)
    colidx = np.searchsorted(items, values)
    stray = (colidx >= len(items)) | (items[np.minimum(colidx, len(items) - 1)] != values)
    if stray.any():
        raise WenlvError(f"{where}: {int(stray.sum())} rows name a {col} not in tourism/poi_features "
                         f"(first at row {int(np.argmax(stray))})")
    matrix = sp.csr_matrix((conf.astype(np.float32), (row, colidx)), shape=(len(tokens), len(items)),
                           dtype=np.float32)
    matrix.sort_indices()
    return PartyBlock(party=party, items=items, matrix=matrix)


def load_party_block(features: str | Path, party: str, tokens: np.ndarray) -> PartyBlock:
    """One party's users × items confidence matrix, read from its own folder only."""
    features = Path(features)
    if party not in contracts.INTERACTION_TABLE:
        raise WenlvError(f"unknown party {party!r}; known: {', '.join(contracts.PARTIES)}")
    frame = _read(features, contracts.INTERACTION_TABLE[party], ["token", contracts.ITEM_COLUMN[party], "confidence"])
    pois = _read(features, contracts.POI_FEATURES, ["poi_id"])["poi_id"] if party == "tourism" else None
    return party_matrix(frame, party, tokens, pois)


def load_party_matrices(features: str | Path, parties=contracts.PARTIES) -> tuple[np.ndarray, dict[str, PartyBlock]]:
    """Tokens and every chosen party's block (in-process convenience; each loads only its own)."""
    tokens = load_users(features)
    return tokens, {p: load_party_block(features, p, tokens) for p in parties}
