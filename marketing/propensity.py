"""Destination propensity — "will this person visit at all in the next weeks" — trained federated.

A split network over the carrier's and the internet platform's features: each party's
bottom tower turns its own feature rows into an embedding; the coordinator (the tourism
group, which holds the labels: who visited) sees only their masked sum
(`training.towers.MaskedSum`: pairwise masks on Z_2^64), runs a small top network on it,
and sends the same gradient back to both parties. Because the top network is non-linear
in the sum, it can combine the parties' signals (a far-away person planning a trip is not
the sum of the two). Scoring goes through the same masked sum.

Fitted on an earlier window — features as of `cut`, labels = a visit in [cut, split) —
among people with no visit before the cut, then scored as of the split: the campaign
question, asked where the answer is not yet known.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from datetime import date, timedelta

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from wenlv.errors import WenlvError
from wenlv.marketing import alignment
from wenlv.marketing import party_features as pf
from wenlv.training.towers import MaskedSum


PARTIES = ("carrier", "internet")
LABEL_DAYS = 28


@dataclass
class PropensityData:
    """People aligned across the parties (row i is one person in every frame), as of one date."""

    as_of: date
    tokens: np.ndarray                 # the carrier-issued user token of each row (PSI-aligned)
    frames: dict[str, np.ndarray]      # party -> float matrix, its own columns
    columns: dict[str, list[str]]
    home_city: np.ndarray
    has_internet: np.ndarray
    label: np.ndarray | None = None    # visited in [as_of, as_of + LABEL_DAYS), when known
    signals: pd.DataFrame = field(default_factory=pd.DataFrame)  # the single-party peer signals


def build_data(data_dir, as_of: date, visits: pd.DataFrame | None = None, with_label: bool = True,
               key: bytes | None = None) -> PropensityData:
    """Consenting subscribers with no visit before `as_of`, each party's features aligned to them.

    Each party's rows are keyed by the user token PSI gives them (`alignment`), and the
    parties' rows are joined on tokens, never on phone numbers. `key` is the carrier's
    token key (default: fresh for this call, so its tokens link to nothing else).
    """
    key = key if key is not None else secrets.token_bytes(32)
    visits = pf.tourism_visits(data_dir) if visits is None else visits
    carrier = pf.carrier_features(data_dir, as_of)
    carrier_phones = carrier.pop("phone").to_numpy()
    carrier.index = alignment.carrier_tokens(carrier_phones, key)
    internet = pf.internet_features(data_dir, as_of)
    internet.index = alignment.partner_tokens(internet.pop("phone").to_numpy(), carrier_phones, carrier.index.to_numpy(),
                                              "propensity/internet")
    internet = internet[internet.index.notna()]
    visitors = visits.drop_duplicates("phone")
    visitor_token = pd.Series(alignment.partner_tokens(visitors.phone.to_numpy(), carrier_phones,
                                                       carrier.index.to_numpy(), "propensity/tourism"),
                              index=visitors.phone.to_numpy())
    visits = visits.assign(token=visits.phone.map(visitor_token)).dropna(subset=["token"])
    history = pf.visited_between(visits, date(1900, 1, 1), as_of)
    carrier = carrier[~carrier.index.isin(history)]
    internet = internet.reindex(carrier.index)  # dense: a row for everyone
    has_internet = internet.notna().all(axis=1).to_numpy()
    never = {c: np.log1p(pf.NEVER_DAYS) for c in internet.columns if c.startswith("log_days_since")}
    internet = internet.fillna(never).fillna(0.0)
    internet["has_account"] = has_internet.astype(np.float64)
    carrier_cols = [c for c in carrier.columns if c != "home_city"]
    internet_cols = list(internet.columns)
    label = None
    if with_label:
        later = pf.visited_between(visits, as_of, as_of + timedelta(days=LABEL_DAYS))
        label = carrier.index.isin(later)
    signals = pd.DataFrame({  # the peers an analyst would build first (features/signal.py's three)
        "carrier_home_distance": -carrier.log_home_distance.to_numpy(),
        "carrier_days_present": carrier.days_present_all.to_numpy(),
        "internet_travel_events_28d": internet.travel_events_28.to_numpy(),
    })
    return PropensityData(as_of, carrier.index.to_numpy(), {
        "carrier": carrier[carrier_cols].to_numpy(np.float32), "internet": internet[internet_cols].to_numpy(np.float32)},
        {"carrier": carrier_cols, "internet": internet_cols}, carrier.home_city.to_numpy(), has_internet, label, signals)


class _Bottom(nn.Module):
    """A party's tower; standardisation is fitted by the party on its own rows and baked in."""

    def __init__(self, x: np.ndarray, width: int, hidden: int):
        super().__init__()
        std = x.std(axis=0)
        self.register_buffer("mean", torch.from_numpy(x.mean(axis=0)))
        self.register_buffer("std", torch.from_numpy(np.where(std > 1e-6, std, 1.0).astype(np.float32)))
        self.net = nn.Sequential(nn.Linear(x.shape[1], hidden), nn.ReLU(), nn.Linear(hidden, width))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


class _Top(nn.Module):
    """The coordinator's network on the summed embedding (and, for uplift, the arm it assigned)."""

    def __init__(self, width: int, hidden: int, with_treatment: bool, base_rate: float):
        super().__init__()
        self.with_treatment = with_treatment
        inputs = 2 * width + 1 if with_treatment else width  # [h, t, t·h]: the effect may depend on h
        self.net = nn.Sequential(nn.Linear(inputs, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        nn.init.constant_(self.net[-1].bias, float(np.log(base_rate / (1 - base_rate))))

    def forward(self, summed, treated=None):
        h = torch.relu(summed)
        if self.with_treatment:
            t = treated.reshape(-1, 1)
            h = torch.cat([h, t, t * h], dim=1)
        return self.net(h).squeeze(1)


@dataclass
class PropensityModel:
    bottoms: dict[str, nn.Module]
    top: _Top
    columns: dict[str, list[str]]
    losses: list[float]
    params: dict

    def score(self, data: PropensityData, batch: int = 8192, treated: float | None = None) -> np.ndarray:
        """Logit per person (as if treated or not, for an uplift model); embeddings cross only as a masked sum."""
        _check_columns(self.columns, data)
        if self.top.with_treatment == (treated is None):
            raise WenlvError("an uplift model scores with treated=0 or 1; a propensity model without it")
        channel = MaskedSum(PARTIES)
        out = []
        with torch.no_grad():
            for start in range(0, len(data.tokens), batch):
                parts = {p: self.bottoms[p](torch.from_numpy(data.frames[p][start:start + batch])).numpy()
                         for p in PARTIES}
                summed = torch.from_numpy(channel(parts))
                arm = torch.full((len(summed),), float(treated or 0.0))
                out.append(self.top(summed, arm).numpy())
        channel.close()
        return np.concatenate(out) if out else np.empty(0, np.float32)

    def uplift(self, data: PropensityData) -> np.ndarray:
        """P(outcome | treated) − P(outcome | not treated) per person."""
        def probability(logit):
            return 1.0 / (1.0 + np.exp(-logit.astype(np.float64)))
        return probability(self.score(data, treated=1.0)) - probability(self.score(data, treated=0.0))


def subset(data: PropensityData, rows: np.ndarray, label: np.ndarray) -> PropensityData:
    """The same people's rows `rows`, with a new label (e.g. an earlier campaign's members and outcomes)."""
    return PropensityData(data.as_of, data.tokens[rows], {p: f[rows] for p, f in data.frames.items()}, data.columns,
                          data.home_city[rows], data.has_internet[rows], np.asarray(label, dtype=bool),
                          data.signals.iloc[rows].reset_index(drop=True))


def _check_columns(columns: dict, data: PropensityData) -> None:
    if columns != data.columns:
        raise WenlvError("propensity features differ from the ones the model was trained on")


def train(data: PropensityData, *, width: int = 8, hidden: int = 16, epochs: int = 12, batch_size: int = 512,
          lr: float = 0.005, weight_decay: float = 1e-4, seed: int = 0, progress: bool = False,
          treated: np.ndarray | None = None) -> PropensityModel:
    """Fit the split network on `data.label` (the coordinator's), over masked sums of embeddings.

    With `treated` (the arm of each row, which the coordinator assigned) the top network also
    sees the arm: an S-learner whose `uplift` is the predicted effect of the contact.
    """
    if data.label is None or data.label.sum() < 10:
        raise WenlvError("propensity training needs at least 10 people who visited in the label window")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small matrices; the machine is shared
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed)
        bottoms = {p: _Bottom(data.frames[p], width, hidden) for p in PARTIES}
        top = _Top(width, hidden, treated is not None, float(np.clip(data.label.mean(), 1e-4, 1 - 1e-4)))
        opts = {p: torch.optim.Adam(bottoms[p].parameters(), lr=lr, weight_decay=weight_decay) for p in PARTIES}
        top_opt = torch.optim.Adam(top.parameters(), lr=lr, weight_decay=weight_decay)
        x = {p: torch.from_numpy(data.frames[p]) for p in PARTIES}
        y = torch.from_numpy(data.label.astype(np.float32))
        arm = torch.from_numpy(np.zeros(len(y), np.float32) if treated is None else np.asarray(treated, np.float32))
        channel = MaskedSum(PARTIES)
        loss_fn = nn.BCEWithLogitsLoss()
        losses = []
        for _ in tqdm(range(epochs), desc="propensity", disable=not progress):
            order = rng.permutation(len(y))
            total = 0.0
            for start in range(0, len(y), batch_size):
                idx = torch.from_numpy(order[start:start + batch_size])
                released = {p: bottoms[p](x[p][idx]) for p in PARTIES}                        # party side
                summed = torch.from_numpy(channel({p: e.detach().numpy() for p, e in released.items()}))
                summed.requires_grad_(True)                                                  # coordinator side
                loss = loss_fn(top(summed, arm[idx]), y[idx])
                top_opt.zero_grad()
                loss.backward()
                top_opt.step()
                grad = summed.grad.detach()                                                  # one gradient back
                for p in PARTIES:
                    opts[p].zero_grad()
                    released[p].backward(grad)
                    opts[p].step()
                total += loss.item() * len(idx)
            losses.append(total / len(y))
        channel.close()
    finally:
        torch.set_num_threads(threads)
    for module in (*bottoms.values(), top):
        module.eval()
    params = {"width": width, "hidden": hidden, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "seed": seed, "train_rows": int(len(y)), "train_positives": int(y.sum()),
              "treatment_input": treated is not None}
    return PropensityModel(bottoms, top, data.columns, losses, params)


def cut_date(split: date, label_days: int = LABEL_DAYS) -> date:
    """The earlier window's cut: labels in [cut, split) — never the test window."""
    return split - timedelta(days=label_days)
