"""Cold-start towers: a TorchScript user tower mapping side features to a user vector.

A bundle may carry `towers/spec.json` naming the tower file and its input features:
    {"user_tower": "user_tower.pt", "user_features": ["home_distance_km", "age_band=25-34", ...]}
A feature `name=value` is a one-hot of a categorical side feature; others are numeric
(missing ones count as 0).

A bundle's tower is part of its model version: one that does not load, or whose output for
an all-zero input is not a finite vector of the factor width within `FACTOR_BOUND`, refuses
the whole version (BundleIntegrityError) rather than quietly serving without it. At request
time a tower that fails to run, or answers with a non-finite or out-of-bound vector, is
logged and not used: the request falls back to popularity, never to an error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from wenlv.training.bundle import FACTOR_BOUND
from wenlv.training.digests import BundleIntegrityError

log = logging.getLogger(__name__)


def _usable(vec: np.ndarray, width: int) -> str | None:
    """Why a tower output cannot serve as a user vector (None when it can)."""
    if vec.shape[0] != width:
        return f"{vec.shape[0]} values, expected {width}"
    if not np.isfinite(vec).all():
        return "values that are NaN or infinite"
    if np.abs(vec).max(initial=0.0) > FACTOR_BOUND:
        return f"a value of magnitude {float(np.abs(vec).max()):.3g} beyond the bound {FACTOR_BOUND:g}"
    return None


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

    def _run(self, row: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = self.module(torch.from_numpy(row).reshape(1, -1))
        return np.asarray(out.detach().cpu().numpy(), dtype=np.float32).reshape(-1)

    def embed(self, side: dict) -> np.ndarray | None:
        try:
            vec = self._run(self.features(side))
        except Exception as exc:  # noqa: BLE001 - a broken tower must not break requests
            log.warning("user tower failed (%s); using popularity", type(exc).__name__)
            return None
        problem = _usable(vec, self.width)
        if problem is not None:
            log.warning("user tower answered with %s; using popularity", problem)
            return None
        return vec


def load_user_tower(towers_dir: Path | None, width: int) -> UserTower | None:
    """The bundle's user tower; None when it has none. Raises BundleIntegrityError when it has a broken one."""
    if towers_dir is None:
        return None
    spec_file = Path(towers_dir) / "spec.json"
    if not spec_file.exists():
        log.warning("bundle has towers/ but no spec.json; cold start uses popularity")
        return None
    try:
        spec = json.loads(spec_file.read_text())
        name = spec.get("user_tower", "user_tower.pt")
        module = torch.jit.load(str(Path(towers_dir) / name), map_location="cpu")
        module.eval()
        tower = UserTower(module, list(spec["user_features"]), width)
        probe = tower._run(np.zeros(len(tower.feature_names), dtype=np.float32))
    except Exception as exc:  # noqa: BLE001 - whatever breaks, the version is refused with the reason
        raise BundleIntegrityError(f"the cold-start user tower does not load or run ({type(exc).__name__}: "
                                   f"{(str(exc).splitlines() or [''])[0][:160]})") from exc
    problem = _usable(probe, width)
    if problem is not None:
        raise BundleIntegrityError(f"the cold-start user tower answers an all-zero input with {problem}")
    return tower
