"""The split towers over the party services: the coordinator's handle and the party's loader.

:class:`RemoteTowerParty` implements :class:`~training.party_api.TowerParty` over a
privacy.party_channel.PartyChannel (``/v1/towers/<method>``: pinned mutual TLS, session and
sequence numbers, the pickle-free streamed body); the service (training.remote.party_app)
answers with the same :class:`~training.tower_party.TowerSide` the in-process run uses, built
from the party's own folder by :func:`load_tower_party`. Masked embeddings are signed and
bound to (run, round, stage) as in process; the coordinator's Aggregator checks them.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wenlv.privacy.party_channel import PartyChannel, WireStats
from wenlv.training.als_data import load_user_features, load_users
from wenlv.training.tower_party import TowerSide
from wenlv.training.towers import align_features


class RemoteTowerParty:
    """The coordinator's handle on one party's tower side (training.party_api.TowerParty over mTLS)."""

    remote = True

    def __init__(self, name: str, url: str, tls_dir: str | Path, timeout: float = 300.0, retries: int = 4,
                 backoff: float = 0.25, stats: WireStats | None = None):
        self.name = name
        self.channel = PartyChannel(name, url, tls_dir, "towers", timeout=timeout, retries=retries, backoff=backoff,
                                    stats=stats)

    def close(self) -> None:
        self.channel.close()

    def _call(self, method: str, *args):
        # WireStats: one entry per message kind (every batch's forward together)
        return self.channel.call(method, *args, stats_key=f"towers.{method}")

    def describe(self) -> dict:
        return self._call("describe")

    def setup(self, parties, identities, rows, width, hidden, lr, seed, noise_multiplier, clip_norm,
              frac_bits) -> dict:
        return self._call("setup", list(parties), dict(identities), np.asarray(rows, dtype=np.int64), int(width),
                          int(hidden), float(lr), int(seed), float(noise_multiplier), float(clip_norm),
                          int(frac_bits))

    def announce(self, run_id, round_no):
        return self._call("announce", run_id, round_no)

    def receive_keys(self, run_id, round_no, announcements) -> None:
        return self._call("receive_keys", run_id, round_no, list(announcements))

    def forward(self, run_id, round_no, stage, batch, grad=None):
        return self._call("forward", run_id, round_no, stage, np.asarray(batch, dtype=np.int64),
                          None if grad is None else np.ascontiguousarray(grad, dtype=np.float32))

    def backward(self, grad) -> None:
        return self._call("backward", np.ascontiguousarray(grad, dtype=np.float32))

    def embed(self, run_id, round_no, stage, rows):
        return self._call("embed", run_id, round_no, stage, np.asarray(rows, dtype=np.int64))

    def end_round(self, run_id, round_no) -> None:
        return self._call("end_round", run_id, round_no)

    def export(self) -> dict:
        return self._call("export")

    def save(self, run_id) -> str:
        return self._call("save", run_id)


def load_tower_party(party: str, data: str | Path, state: str | Path | None = None) -> TowerSide:
    """The party's tower side from its own folder only: its user_features block on the shared user axis."""
    data = Path(data)
    frame = align_features(load_user_features(data, party), load_users(data), party)
    return TowerSide(party, frame, state_dir=state or data / ".wenlv-party")
