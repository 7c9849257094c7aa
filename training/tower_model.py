"""The split towers' model pieces: how a party turns its side features into a matrix, and its
bottom tower (training.towers trains them; training.tower_party runs one party's side)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import nn

from wenlv.features import contracts

# numeric columns that are heavy-tailed counts or distances: log1p before standardising
LOG_COLUMNS = {"home_distance_km", "trip_days", "active_days", "total_events"}


@dataclass
class FeatureSpec:
    """How one party turns its user_features block into a float matrix (fit on training data)."""

    party: str
    names: list[str]                 # raw feature names; "col=value" is a one-hot
    log1p: list[bool]
    mean: list[float]
    std: list[float]

    @classmethod
    def fit(cls, party: str, frame: pd.DataFrame) -> "FeatureSpec":
        table = contracts.table(f"{party}.user_features")
        names, logs = [], []
        for f in table.fields:
            if f.name == "token":
                continue
            if f.type == "string":
                values = f.choices or tuple(sorted(frame[f.name].dropna().unique()))
                names += [f"{f.name}={v}" for v in values]
                logs += [False] * len(values)
            else:
                names.append(f.name)
                logs.append(f.name in LOG_COLUMNS)
        spec = cls(party, names, logs, [0.0] * len(names), [1.0] * len(names))
        raw = spec.raw_matrix(frame)
        x = np.where(spec.log1p, np.log1p(np.maximum(raw, 0.0)), raw)
        spec.mean = x.mean(axis=0).tolist() if len(x) else spec.mean
        spec.std = np.where(x.std(axis=0) > 1e-6, x.std(axis=0), 1.0).tolist() if len(x) else spec.std
        return spec

    def raw_matrix(self, frame: pd.DataFrame) -> np.ndarray:
        """Raw values in spec order (one-hots 0/1, missing → 0), as serving would pass them."""
        cols = []
        for name in self.names:
            if "=" in name:
                col, value = name.split("=", 1)
                cols.append((frame[col].astype("string") == value).fillna(False).to_numpy(np.float32))
            else:
                cols.append(pd.to_numeric(frame[name], errors="coerce").fillna(0.0).to_numpy(np.float32))
        return np.stack(cols, axis=1) if cols else np.zeros((len(frame), 0), np.float32)


class PartyTower(nn.Module):
    """A party's bottom tower: baked transforms, then a small MLP to the embedding width."""

    def __init__(self, spec: FeatureSpec, width: int, hidden: int = 32):
        super().__init__()
        self.register_buffer("log_mask", torch.tensor(spec.log1p, dtype=torch.bool))
        self.register_buffer("mean", torch.tensor(spec.mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(spec.std, dtype=torch.float32))
        self.net = nn.Sequential(nn.Linear(len(spec.names), hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        x = torch.where(self.log_mask, torch.log1p(torch.clamp(raw, min=0.0)), raw)
        return self.net((x - self.mean) / self.std)
