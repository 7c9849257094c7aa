"""The one interface the coordinator drives a party through, in process or over the network.

`Party` is a typing Protocol: `training.federated_als.FederatedALSParty` implements it
in-process (the demo, the tests, `wenlv train` on one machine) and
`training.remote.RemoteParty` implements the same methods over mutual TLS to a
`wenlv party serve` process (one per organisation). The driver (`FederatedALS.fit_parties`)
only calls these methods, so both modes run the same protocol code, message for message.

Every value crossing this interface is either public (shapes, identity keys, the shared
user factors and CG directions) or a signed secure-aggregation message bound to
(run, round, stage) (privacy.secure_agg); no party hands out its block or its item
factors, except the tourism POI factors that serving needs (`item_factors`).
"""
from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from wenlv.errors import WenlvError
from wenlv.privacy.secure_agg import KeyAnnouncement, MaskedMessage


def party_state_file(state_dir: Path, kind: str, run_id: str, filename: str) -> Path:
    """Where a party keeps one run's trained piece on its own disk (``<state_dir>/<kind>/<run>/<filename>``).

    The run id comes from the coordinator: it must be a plain name, never a path."""
    if not run_id.replace("-", "").isalnum():
        raise WenlvError(f"run id {run_id!r} is not a plain name")
    folder = state_dir / kind / run_id
    folder.mkdir(parents=True, exist_ok=True)
    return folder / filename

# the parties with a bottom tower (side features of their own); tourism holds the labels
TOWER_PARTIES = ("carrier", "internet")


@runtime_checkable
class Party(Protocol):
    """One organisation's side of federated ALS (DESIGN §3, §9)."""

    name: str
    remote: bool  # True: calls cross the network (the driver calls every party at once)

    def describe(self) -> dict:
        """Public facts: name, users, items of its block, its identity (signing) key."""

    def setup(self, parties: list, identities: dict, factors: int, regularization: float, cg_steps: int,
              dtype: str, frac_bits: int, num_threads: int = 0, item_factors=None, random_state=None,
              ring_bits: int = 64) -> None:
        """Join a run: peers' identity keys, the model's parameters, its initial item factors."""

    def announce(self, run_id: str, round_no: int) -> KeyAnnouncement:
        """A fresh signed ephemeral key for a new round."""

    def receive_keys(self, run_id: str, round_no: int, announcements: list) -> None:
        """The others' signed keys: derive the round's pair keys."""

    def support(self, run_id: str, round_no: int) -> MaskedMessage:
        """Masked weighted 'has an interaction' flags (dense over every user)."""

    def gram(self, run_id: str, round_no: int) -> MaskedMessage:
        """Masked Y_pᵀY_p."""

    def residual(self, run_id: str, round_no: int, stage: str, X: np.ndarray) -> MaskedMessage:
        """Masked sparse part of the CG start residual for user factors X."""

    def product(self, run_id: str, round_no: int, stage: str, P: np.ndarray) -> MaskedMessage:
        """Masked sparse part of A·p for the CG directions P."""

    def end_round(self, run_id: str, round_no: int) -> None:
        """Forget the round's keys (completed or aborted)."""

    def item_step(self, X: np.ndarray, user_gram: np.ndarray | None = None) -> None:
        """Solve its own item factors against the released user factors."""

    def item_factors(self) -> np.ndarray:
        """Its item factors (only the tourism POI factors are ever asked for in production)."""

    def save(self, run_id: str) -> str:
        """Keep its item factors on its own disk; the path (on its side) where they went."""


@runtime_checkable
class TowerParty(Protocol):
    """One organisation's side of the split towers (training.towers; DESIGN §3): its bottom tower
    on its own side features. In process: training.tower_party.TowerSide; over the network:
    training.remote_towers.RemoteTowerParty. What crosses it: public facts, signed key
    announcements, masked embeddings, the coordinator's one gradient per batch (the same for
    every party), the batch's row positions, and at the end the trained tower for serving."""

    name: str
    remote: bool

    def describe(self) -> dict:
        """Public facts: name, users on its axis, its identity (signing) key."""

    def setup(self, parties: list, identities: dict, rows: np.ndarray, width: int, hidden: int, lr: float,
              seed: int, noise_multiplier: float, clip_norm: float, frac_bits: int) -> dict:
        """Join a run: peers' keys, the training rows (positions on the user axis), the tower's shape."""

    def announce(self, run_id: str, round_no: int) -> KeyAnnouncement:
        """A fresh signed ephemeral key for the run's round."""

    def receive_keys(self, run_id: str, round_no: int, announcements: list) -> None:
        """The others' signed keys: derive the round's pair keys."""

    def forward(self, run_id: str, round_no: int, stage: str, batch: np.ndarray,
                grad: np.ndarray | None = None) -> MaskedMessage:
        """Masked embeddings of a batch (positions among the training rows), after applying `grad`,
        the previous batch's gradient (None for the first)."""

    def backward(self, grad: np.ndarray) -> None:
        """∂loss/∂(summed embeddings) of the fit's final batch: one optimiser step."""

    def embed(self, run_id: str, round_no: int, stage: str, rows: np.ndarray) -> MaskedMessage:
        """Masked noiseless embeddings of users on the axis (evaluation)."""

    def end_round(self, run_id: str, round_no: int) -> None:
        """Forget the round's keys."""

    def export(self) -> dict:
        """The trained tower: feature transform and weights (for the served user tower)."""

    def save(self, run_id: str) -> str:
        """Keep its tower on its own disk; the path (on its side)."""
