"""One party's side of the split towers: its bottom tower on its own side features.

:class:`TowerSide` implements :class:`~training.party_api.TowerParty` in process; the same
object answers behind `wenlv party serve` (training.remote, ``/v1/towers/<method>``), so a
remote run executes this code, message for message. It holds the party's `user_features`
rows over the shared user axis, its :class:`~training.tower_model.PartyTower`, its optimiser and
its masking keys; it hands out only masked embeddings (secure_agg: the coordinator sees their
sum over the parties) and, at the end, its trained tower for the served user tower.

Randomness is per party (the tower's initial weights and its DP noise come from generators
seeded by the run seed and the party's name), so a party computes the same numbers in its own
process as in the coordinator's.
"""
from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wenlv.privacy.secure_agg import Identity, MaskingParty
from wenlv.training.party_api import party_state_file
from wenlv.training.tower_model import FeatureSpec, PartyTower
from wenlv.errors import WenlvError


# nn.Linear draws its initial weights from torch's one global generator: two parties set up at
# once in one process (services in threads, in tests) must not interleave their draws
_GLOBAL_RNG = threading.Lock()


@contextmanager
def one_torch_thread():
    """Torch's intra-op threads at 1 for one call, in whichever thread makes it: the float order
    then does not depend on the calling thread (a service answers from its thread pool, and
    torch's thread setting does not carry over to threads it did not start on)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def party_seed(seed: int, party: str) -> int:
    """The party's own seed for the run (its tower's initial weights, its noise)."""
    return int.from_bytes(hashlib.sha256(f"{int(seed)}:{party}".encode()).digest()[:4], "little")


class TowerSide:
    """A party's bottom tower over its `user_features` rows (aligned to the shared user axis)."""

    remote = False  # training.party_api.TowerParty: called in this process

    def __init__(self, name: str, frame: pd.DataFrame, identity: Identity | None = None, state_dir=None):
        self.name = name
        self.frame = frame.reset_index(drop=True)
        self.identity = identity or Identity(name)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self._masking: MaskingParty | None = None
        self._tower: PartyTower | None = None
        self._released: torch.Tensor | None = None

    def describe(self) -> dict:
        return {"name": self.name, "n_users": len(self.frame), "identity": self.identity.public_bytes}

    def setup(self, parties: list, identities: dict, rows: np.ndarray, width: int, hidden: int, lr: float,
              seed: int, noise_multiplier: float, clip_norm: float, frac_bits: int) -> dict:
        """Fit the feature transform on the training rows and build the tower; its feature count back."""
        rows = np.asarray(rows, dtype=np.int64)
        if rows.ndim != 1 or len(rows) == 0 or rows.min() < 0 or rows.max() >= len(self.frame):
            raise WenlvError(f"{self.name}: training rows must be positions on the user axis (0…{len(self.frame) - 1})")
        self._masking = MaskingParty(self.identity, tuple(parties), identities, frac_bits)
        train = self.frame.iloc[rows].reset_index(drop=True)
        self.spec = FeatureSpec.fit(self.name, train)
        own = party_seed(seed, self.name)
        with _GLOBAL_RNG, torch.random.fork_rng(devices=[]):
            torch.manual_seed(own)
            self._tower = PartyTower(self.spec, int(width), int(hidden))
        self._hidden = int(hidden)
        self._x = torch.from_numpy(self.spec.raw_matrix(train))
        self._opt = torch.optim.Adam(self._tower.parameters(), lr=float(lr))
        self._noise, self._clip = float(noise_multiplier), float(clip_norm)
        self._noise_gen = torch.Generator().manual_seed(own + 1)
        return {"features": len(self.spec.names)}

    def announce(self, run_id: str, round_no: int):
        return self._masking.announce(run_id, round_no)

    def receive_keys(self, run_id: str, round_no: int, announcements: list) -> None:
        self._masking.receive_keys(run_id, round_no, announcements)

    def end_round(self, run_id: str, round_no: int) -> None:
        self._masking.end_round(run_id, round_no)

    def forward(self, run_id: str, round_no: int, stage: str, batch: np.ndarray, grad: np.ndarray | None = None):
        """Masked embeddings of a batch (positions among the training rows); DP-noised if configured.
        The graph is kept for the gradient that comes back. `grad`: the previous batch's gradient,
        applied first (one request per batch over the network instead of two)."""
        if grad is not None:
            self.backward(grad)
        idx = torch.from_numpy(np.asarray(batch, dtype=np.int64))
        with one_torch_thread():
            e = self._tower(self._x[idx])
            if self._noise > 0:
                norms = e.norm(dim=1, keepdim=True).clamp(min=1e-12)
                e = e * torch.clamp(self._clip / norms, max=1.0)
                e = e + torch.randn(e.shape, generator=self._noise_gen) * (self._noise * self._clip)
        self._released = e
        return self._masking.mask(run_id, round_no, stage, e.detach().numpy())

    def backward(self, grad: np.ndarray) -> None:
        """∂loss/∂sum for the last batch (the same for every party): one optimiser step. Sent on its
        own only for a fit's final batch; the others ride on the next `forward`."""
        if self._released is None:
            raise WenlvError(f"{self.name}: a gradient came before any embeddings")
        grad = np.asarray(grad, dtype=np.float32)
        if grad.shape != tuple(self._released.shape):
            raise WenlvError(f"{self.name}: gradient has shape {grad.shape}, expected {tuple(self._released.shape)}")
        with one_torch_thread():
            self._opt.zero_grad()
            self._released.backward(torch.from_numpy(grad))
            self._opt.step()
        self._released = None

    def embed(self, run_id: str, round_no: int, stage: str, rows: np.ndarray):
        """Masked noiseless embeddings of users on the axis (evaluation: their sum, as serving computes it)."""
        rows = np.asarray(rows, dtype=np.int64)
        with torch.no_grad(), one_torch_thread():
            e = self._tower(torch.from_numpy(self.spec.raw_matrix(self.frame.iloc[rows])))
        return self._masking.mask(run_id, round_no, stage, e.numpy())

    def export(self) -> dict:
        """The trained tower for the served user tower: its feature transform and weights."""
        state = {k: v.detach().numpy().copy() for k, v in self._tower.state_dict().items()}
        return {"names": list(self.spec.names), "log1p": [bool(b) for b in self.spec.log1p],
                "mean": list(self.spec.mean), "std": list(self.spec.std), "hidden": self._hidden, "state": state}

    def save(self, run_id: str) -> str:
        """Keep the tower on this party's own disk (``<state_dir>/towers/<run>/``); "" without one."""
        if self.state_dir is None or self._tower is None:
            return ""
        path = party_state_file(self.state_dir, "towers", run_id, f"{self.name}_tower.pt")
        torch.save(self._tower.state_dict(), path)
        return str(path)


def tower_from_export(party: str, exported: dict, width: int) -> tuple[FeatureSpec, PartyTower]:
    """The coordinator's copy of a party's trained tower (for export_towers and serving)."""
    spec = FeatureSpec(party, list(exported["names"]), [bool(b) for b in exported["log1p"]],
                       [float(m) for m in exported["mean"]], [float(s) for s in exported["std"]])
    tower = PartyTower(spec, width, int(exported["hidden"]))
    tower.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in exported["state"].items()})
    return spec, tower
