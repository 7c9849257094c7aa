"""Split PyTorch towers for cold-start visitors and prospects (DESIGN §3).

Each non-coordinator party (carrier, internet) owns a *bottom tower* that maps its own
side features (`<party>/user_features`) to an embedding of the POI-factor width. The
parties never send embeddings in clear: each batch's embeddings are fixed-point encoded
and masked with `privacy.secure_agg` (pairwise X25519 masks on Z_2^64), so the
coordinator (tourism) learns only their *sum*. The coordinator scores that sum against
the POI factors from ALS, computes the loss (multinomial log-likelihood of the user's
training-window POIs), and sends back one gradient, ∂loss/∂sum — identical for every
party, since ∂sum/∂embedding_p is the identity. Each party back-propagates it through its
own tower. The coordinator's loop (:func:`fit_tower_parties`) calls each party through
training.party_api.TowerParty: training.tower_party.TowerSide in process, or
training.remote_towers.RemoteTowerParty over a party's service (docs/deployment.md).

Optional DP (`noise_multiplier` > 0): each party clips every example's embedding to L2
norm `clip_norm` and adds Gaussian noise N(0, (σ·clip_norm)²) before masking — the
Gaussian mechanism on every release, with Poisson-style sampling rate batch/n. Opacus's
RDP accountant turns (σ, rate, steps, δ) into the ε that is logged. Symmetrically,
`grad_noise_multiplier` > 0 makes the coordinator clip each example's gradient row to
`clip_norm` and add N(0, (σ_g·clip_norm)²) before sending it back, which bounds what the
parties learn about the tourism party's visits (the labels): `epsilon_labels`.

Serving gets one TorchScript module, `towers/user_tower.pt`: raw side features in (the
order of `spec.json`'s `user_features`; `name=value` entries are one-hots), the summed
embedding out, transforms baked in — see `export_towers`.
"""
from __future__ import annotations

import json
import logging
import uuid
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from tqdm import tqdm

from wenlv.privacy import secure_agg
from wenlv.training.party_api import TOWER_PARTIES, TowerParty
from wenlv.training.tower_model import FeatureSpec, PartyTower
from wenlv.training.tower_party import TowerSide, one_torch_thread, tower_from_export
from wenlv.errors import WenlvError

log = logging.getLogger(__name__)



class SummedUserTower(nn.Module):
    """Serving's view: every party's tower on its slice of one raw feature row, summed."""

    def __init__(self, towers: nn.ModuleList, bounds: list[tuple[int, int]]):
        super().__init__()
        self.towers, self.bounds = towers, bounds

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        parts = [tower(raw[:, self.bounds[i][0]:self.bounds[i][1]]) for i, tower in enumerate(self.towers)]
        return torch.stack(parts, dim=0).sum(dim=0)


# ---------------------------------------------------------------- the masked sum
class MaskedSum:
    """Sums the parties' embeddings through secure aggregation: the coordinator sees only the sum.

    One key-agreement round per `MaskedSum` (re-keyed with a new round on failure); every
    sum is its own stage of that round, so each mask is used once.
    """

    def __init__(self, parties, frac_bits: int = secure_agg.DEFAULT_FRAC_BITS, run_id: str | None = None,
                 audit=None):
        self.parties = tuple(sorted(parties))
        self.frac_bits = frac_bits
        self.run_id = run_id or f"towers-{uuid.uuid4().hex[:12]}"
        ids = {p: secure_agg.Identity(p) for p in self.parties}
        publics = {p: i.public_bytes for p, i in ids.items()}
        self.members = {p: secure_agg.MaskingParty(ids[p], self.parties, publics, frac_bits) for p in self.parties}
        self.aggregator = secure_agg.Aggregator(self.run_id, self.parties, publics, frac_bits, audit=audit)
        self.round = 0
        self._stage = 0
        self._key_round()

    def _key_round(self) -> None:
        self.round += 1
        self.aggregator.open_round(self.round)
        for m in self.members.values():
            self.aggregator.receive_key(m.announce(self.run_id, self.round))
        keys = self.aggregator.keys()
        for m in self.members.values():
            m.receive_keys(self.run_id, self.round, keys)

    def __call__(self, contributions: dict[str, np.ndarray]) -> np.ndarray:
        if set(contributions) != set(self.parties):
            raise WenlvError(f"masked sum needs every party {self.parties}, got {sorted(contributions)}")
        self._stage += 1
        stage = f"embeddings-{self._stage}"
        self.aggregator.open_stage(stage)
        for p in self.parties:
            self.aggregator.submit(self.members[p].mask(self.run_id, self.round, stage, contributions[p]))
        return self.aggregator.close_stage().astype(np.float32)

    def close(self) -> None:
        self.aggregator.close_round()
        for m in self.members.values():
            m.end_round(self.run_id, self.round)


# ---------------------------------------------------------------- training
@dataclass
class TowerResult:
    towers: dict[str, PartyTower]
    specs: dict[str, FeatureSpec]
    width: int
    losses: list[float]                       # mean training loss per epoch
    params: dict = field(default_factory=dict)
    epsilon: float | None = None              # DP ε of the parties' features at `delta` (None without noise)
    epsilon_labels: float | None = None       # DP ε of the coordinator's labels (None without gradient noise)
    embeddings: np.ndarray | None = None      # masked-sum embeddings of `eval_rows` (None if not asked for)
    saved: dict = field(default_factory=dict)  # party -> where it kept its tower (on its side)
    transcript: list = field(default_factory=list)  # masked messages seen (with record_view)

    def embed(self, frames: dict[str, pd.DataFrame]) -> np.ndarray:
        """Summed embedding in clear (for evaluation and serving, not in the protocol)."""
        with torch.no_grad():
            return sum(self.towers[p](torch.from_numpy(self.specs[p].raw_matrix(frames[p]))).numpy()
                       for p in self.towers)


def side_frames(blocks, tokens, parties=TOWER_PARTIES) -> dict[str, pd.DataFrame]:
    """Each party's user_features rows aligned to `tokens` (absent users: all-missing rows)."""
    return {p: align_features(blocks[f"{p}/user_features"], tokens, p) for p in parties}


def align_features(frame: pd.DataFrame, tokens, party: str) -> pd.DataFrame:
    """One party's user_features rows on the user axis `tokens` (absent users: all-missing rows)."""
    if frame["token"].duplicated().any():
        raise WenlvError(f"{party}/user_features: duplicate tokens")
    return frame.set_index("token").reindex(pd.Index(tokens, name="token")).reset_index()


def train_towers(frames: dict[str, pd.DataFrame], targets, poi_factors: np.ndarray, **kwargs) -> TowerResult:
    """Fit in process: one :class:`~training.tower_party.TowerSide` per party over `frames`
    (rows aligned across parties, every row a training user); see :func:`fit_tower_parties`."""
    n = len(next(iter(frames.values())))
    if any(len(f) != n for f in frames.values()):
        raise WenlvError("tower training: the parties' feature rows are not aligned")
    sides = {p: TowerSide(p, frames[p]) for p in sorted(frames)}
    return fit_tower_parties(sides, np.arange(n), targets, poi_factors, **kwargs)


def fit_tower_parties(parties: dict[str, TowerParty], rows, targets, poi_factors: np.ndarray, *, epochs: int = 30,
                      batch_size: int = 128, lr: float = 0.01, hidden: int = 32, noise_multiplier: float = 0.0,
                      clip_norm: float = 1.0, delta: float | None = None, seed: int = 0,
                      grad_noise_multiplier: float = 0.0, frac_bits: int = secure_agg.DEFAULT_FRAC_BITS,
                      eval_rows=None, run_id: str | None = None, audit=None, record_view: bool = False,
                      progress: bool = False) -> TowerResult:
    """Fit the bottom towers so that the masked sum of embeddings ranks each user's POIs.

    parties: TowerParty handles (in process or training.remote_towers.RemoteTowerParty).
    rows:    positions on the parties' user axis of the training users; targets[i] is row i's
             [n_pois] 0/1 (scipy sparse or dense) training-window visits. Users without any
             are left out.
    eval_rows: positions whose (noiseless, masked-sum) embeddings to return in `.embeddings`.
    """
    with one_torch_thread():  # tiny matrices: more threads only contend (and the machine is shared)
        return _fit(parties, np.asarray(rows, dtype=np.int64), targets, poi_factors, epochs=epochs,
                    batch_size=batch_size, lr=lr, hidden=hidden, noise_multiplier=noise_multiplier,
                    clip_norm=clip_norm, delta=delta, seed=seed, frac_bits=frac_bits, progress=progress,
                    grad_noise_multiplier=grad_noise_multiplier, eval_rows=eval_rows,
                    run_id=run_id or f"towers-{uuid.uuid4().hex[:12]}", audit=audit, record_view=record_view)


def _each(parties: dict, call) -> dict:
    """``call(party)`` for every party: remote ones at once (each in its own process), in-process in turn."""
    if not any(getattr(h, "remote", False) for h in parties.values()):
        return {p: call(h) for p, h in parties.items()}
    with ThreadPoolExecutor(max_workers=len(parties)) as pool:
        futures = {p: pool.submit(call, h) for p, h in parties.items()}
        return {p: f.result() for p, f in futures.items()}


def _fit(parties, rows, targets, poi_factors, *, epochs, batch_size, lr, hidden, noise_multiplier, clip_norm,
         delta, seed, frac_bits, progress, grad_noise_multiplier, eval_rows, run_id, audit, record_view
         ) -> TowerResult:
    rng = np.random.default_rng(seed)
    parties = {p: parties[p] for p in sorted(parties)}
    names = list(parties)
    y = np.asarray(targets.todense() if hasattr(targets, "todense") else targets, dtype=np.float32)
    if y.shape != (len(rows), poi_factors.shape[0]):
        raise WenlvError(f"tower training: targets {y.shape} do not match {len(rows)} users × "
                         f"{poi_factors.shape[0]} POIs")
    keep = y.sum(axis=1) > 0
    if keep.sum() < 2:
        raise WenlvError("tower training needs at least two users with training-window visits")
    info = _each(parties, lambda h: h.describe())
    if len({i["n_users"] for i in info.values()}) != 1:
        raise WenlvError(f"tower parties are not aligned on users: { {p: i['n_users'] for p, i in info.items()} }")
    width = int(poi_factors.shape[1])
    identities = {p: info[p]["identity"] for p in names}
    _each(parties, lambda h: h.setup(names, identities, rows[keep], width, hidden, lr, seed, noise_multiplier,
                                     clip_norm, frac_bits))
    agg = secure_agg.Aggregator(run_id, tuple(names), identities, frac_bits, audit=audit)
    agg.record_view = record_view
    round_no, stage_no = 1, 0

    def masked_sum(stage: str, call) -> np.ndarray:   # the coordinator sees this only
        agg.open_stage(stage)
        for msg in _each(parties, call).values():
            agg.submit(msg)
        return agg.close_stage().astype(np.float32)

    y_t = torch.from_numpy(y[keep] / y[keep].sum(axis=1, keepdims=True))
    v = torch.from_numpy(np.ascontiguousarray(poi_factors, dtype=np.float32))
    m = len(y_t)
    batch_size = min(batch_size, m)
    steps, losses, embeddings, pending = 0, [], None, None
    noise_gen = torch.Generator().manual_seed(seed + 1)
    agg.open_round(round_no)
    try:
        for ann in _each(parties, lambda h: h.announce(run_id, round_no)).values():
            agg.receive_key(ann)
        keys = agg.keys()
        _each(parties, lambda h: h.receive_keys(run_id, round_no, keys))
        for _ in tqdm(range(epochs), desc="towers", disable=not progress):
            order = rng.permutation(m)
            total = 0.0
            for start in range(0, m, batch_size):
                batch = order[start:start + batch_size]
                stage_no += 1
                summed = masked_sum(f"embeddings-{stage_no}",   # the previous batch's gradient rides along
                                    lambda h: h.forward(run_id, round_no, f"embeddings-{stage_no}", batch, pending))
                s = torch.from_numpy(summed).requires_grad_(True)
                idx = torch.from_numpy(batch)
                loss = -(y_t[idx] * torch.log_softmax(s @ v.T, dim=1)).sum(dim=1).mean()
                loss.backward()
                grad = s.grad.detach()                         # one gradient, sent to every party
                if grad_noise_multiplier > 0:                  # row i depends on example i's label only
                    per_example = grad * len(idx)              # undo the batch mean
                    norms = per_example.norm(dim=1, keepdim=True).clamp(min=1e-12)
                    per_example = per_example * torch.clamp(clip_norm / norms, max=1.0)
                    per_example = per_example + torch.randn(grad.shape, generator=noise_gen) * (
                        grad_noise_multiplier * clip_norm)
                    grad = per_example / len(idx)
                pending = grad.numpy()
                total += loss.detach().item() * len(idx)
                steps += 1
            losses.append(total / m)
        if pending is not None:
            _each(parties, lambda h: h.backward(pending))   # the final batch's gradient
        if eval_rows is not None:
            eval_rows = np.asarray(eval_rows, dtype=np.int64)
            embeddings = masked_sum("embed", lambda h: h.embed(run_id, round_no, "embed", eval_rows))
        agg.close_round()
    except secure_agg.DropoutError as exc:   # a party went away: nothing more of this run is released
        agg.abort_round()
        raise secure_agg.SecureAggError(f"tower training aborted: {exc}") from exc
    finally:
        for h in parties.values():
            try:
                h.end_round(run_id, round_no)
            except secure_agg.DropoutError:
                log.warning("a tower party did not hear the end of round %d", round_no)
    exported = _each(parties, lambda h: h.export())
    built = {p: tower_from_export(p, exported[p], width) for p in names}
    saved = _each(parties, lambda h: h.save(run_id))
    delta = delta if delta is not None else 1.0 / max(m, 2)
    epsilon = _epsilon(noise_multiplier, batch_size / m, steps, delta)
    epsilon_labels = _epsilon(grad_noise_multiplier, batch_size / m, steps, delta)
    params = {"tower_epochs": epochs, "tower_batch_size": batch_size, "tower_lr": lr, "tower_hidden": hidden,
              "tower_noise_multiplier": noise_multiplier, "tower_grad_noise_multiplier": grad_noise_multiplier,
              "tower_clip_norm": clip_norm, "tower_delta": delta,
              "fixed_point_frac_bits": frac_bits, "tower_parties": ",".join(names), "tower_run_id": run_id}
    return TowerResult({p: built[p][1] for p in names}, {p: built[p][0] for p in names}, width, losses, params,
                       epsilon, epsilon_labels, embeddings, saved, agg.view)


def _epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float | None:
    """ε of `steps` subsampled Gaussian releases (Opacus RDP accountant); None without noise."""
    if noise_multiplier <= 0:
        return None
    accountant = RDPAccountant()
    accountant.history.append((noise_multiplier, sample_rate, steps))
    return float(accountant.get_epsilon(delta=delta))


# ---------------------------------------------------------------- export for serving
def export_towers(result: TowerResult, out: str | Path) -> Path:
    """`towers/`: user_tower.pt (TorchScript, raw features → summed embedding), spec.json, state dicts."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    parties = sorted(result.towers)
    names, bounds, start = [], [], 0
    for p in parties:
        names += result.specs[p].names
        bounds.append((start, start + len(result.specs[p].names)))
        start += len(result.specs[p].names)
    module = SummedUserTower(nn.ModuleList([result.towers[p] for p in parties]), bounds).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, torch.zeros(2, len(names)))
        traced.save(str(out / "user_tower.pt"))
    for p in parties:
        torch.save(result.towers[p].state_dict(), out / f"{p}_tower.pt")
    spec = {
        "user_tower": "user_tower.pt",
        "user_features": names,
        "width": result.width,
        "parties": {p: {"features": result.specs[p].names, "state_dict": f"{p}_tower.pt",
                        "hidden": result.params.get("tower_hidden")} for p in parties},
        "dp": {"noise_multiplier": result.params.get("tower_noise_multiplier", 0.0),
               "epsilon": result.epsilon, "grad_noise_multiplier": result.params.get("tower_grad_noise_multiplier", 0.0),
               "epsilon_labels": result.epsilon_labels, "delta": result.params.get("tower_delta")},
    }
    (out / "spec.json").write_text(json.dumps(spec, indent=2))
    return out


def load_user_tower(towers_dir: str | Path):
    """(TorchScript module, feature names) from an exported `towers/` folder."""
    towers_dir = Path(towers_dir)
    spec = json.loads((towers_dir / "spec.json").read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(towers_dir / spec["user_tower"]), map_location="cpu")
    return module.eval(), list(spec["user_features"])

