"""Cold-start towers: a TorchScript user tower mapping side features to a user vector.

A bundle may carry `towers/spec.json` naming the tower file and its input features:
    {"user_tower": "user_tower.pt", "user_features": ["home_distance_km", "age_band=25-34", ...]}
A feature `name=value` is a one-hot of a categorical side feature; others are numeric
(missing ones count as 0). A tower that fails to load or to run is logged and not used:
the request falls back to popularity, never to an error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


class UserTower:
    def __init__(self, module, feature_names: list[str], width: int):
        self.module, self.feature_names, self.width = module, feature_names, width

    def features(self, side: dict) -> np.ndarray:
        row = np.zeros(len(self.feature_names), dtype=np.float32)
        for i, name in enumerate(self.feature_names):
            if "=" in name:
                key, value = name.split("=", 1)
                row[i] = float(str(side.get(key)) == value)
            else:
                try:
                    row[i] = float(side.get(name) or 0.0)
                except (TypeError, ValueError):
                    row[i] = 0.0
        return row

    def embed(self, side: dict) -> np.ndarray | None:
        import torch

        try:
            with torch.no_grad():
                out = self.module(torch.from_numpy(self.features(side)).reshape(1, -1))
            vec = np.asarray(out.detach().cpu().numpy(), dtype=np.float32).reshape(-1)
        except Exception as exc:  # noqa: BLE001 - a broken tower must not break requests
            log.warning("user tower failed (%s); using popularity", type(exc).__name__)
            return None
        return vec if vec.shape[0] == self.width else None


def load_user_tower(towers_dir: Path | None, width: int) -> UserTower | None:
    if towers_dir is None:
        return None
    spec_file = Path(towers_dir) / "spec.json"
    if not spec_file.exists():
        log.warning("bundle has towers/ but no spec.json; cold start uses popularity")
        return None
    try:
        import torch

        spec = json.loads(spec_file.read_text())
        module = torch.jit.load(str(Path(towers_dir) / spec.get("user_tower", "user_tower.pt")), map_location="cpu")
        module.eval()
        return UserTower(module, list(spec["user_features"]), width)
    except Exception as exc:  # noqa: BLE001
        log.warning("cannot load the user tower (%s: %s); cold start uses popularity", type(exc).__name__, exc)
        return None
