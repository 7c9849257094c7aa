"""`wenlv bench privacy`: the secure-aggregation privacy claims measured, not only stated.

1. **Uniformity.** The coordinator's view of one party's masked CG message (Z_2^64 and the
   narrow Z_2^32): a χ² test of each byte position over 256 bins (Bonferroni over the byte
   positions) and a Kolmogorov–Smirnov test of payload / 2^ring against U(0, 1). Control:
   the same tests on the plain fixed-point encoding, which must fail.
2. **Independence of the input.** Over repeated rounds (fresh keys each), the coordinator's
   view of the carrier's message when the carrier's input is its real residual vs all zeros:
   a two-sample KS test on the pooled elements. Control: the plain encodings of the two.
3. **Interaction inference.** Everything the coordinator learns in a run — the user factors
   after every round, and per round the per-user stage sums along the CG directions (r0,
   ap1..ap3) and YᵀY — is given to a linear probe (ridge, closed form) trained on half the
   users with their true labels (a strong attacker: it has ground truth for half the users)
   to predict, for each of the carrier's most popular areas, whether a held-out user
   interacted with it. AUC against chance (0.5) with a bootstrap interval over held-out
   users, beside the same probe on the user factors alone (what the model publishes to
   every party anyway) and on the carrier's unmasked terms (what a protocol without secure
   aggregation would show: the probe's power).
"""
from __future__ import annotations

import json
import time

import numpy as np
from scipy import stats

from wenlv.bench.als import synthesize
from wenlv.privacy.secure_agg import Aggregator, Identity, MaskingParty, decode_fixed, encode_fixed
from wenlv.training.federated_als import FederatedALS, FederatedALSParty, init_factors, sparse_residual

PARTIES = ("carrier", "internet", "tourism")


def uniformity(payload: np.ndarray, ring_bits: int) -> dict:
    """χ² per byte position (min p × positions) and KS of payload / 2^ring against U(0, 1)."""
    raw = np.ascontiguousarray(payload).view(np.uint8).reshape(-1, ring_bits // 8)
    chi = [stats.chisquare(np.bincount(raw[:, k], minlength=256)).pvalue for k in range(raw.shape[1])]
    u = payload.astype(np.float64) / 2.0 ** ring_bits
    return {"elements": int(payload.size), "chi2_bytes_min_p_bonferroni": float(min(1.0, min(chi) * len(chi))),
            "ks_uniform_p": float(stats.kstest(u, "uniform").pvalue)}


def _keyed(run: str, round_no: int, frac_bits: int = 32):
    ids = {p: Identity(p) for p in PARTIES}
    pubs = {p: i.public_bytes for p, i in ids.items()}
    members = {p: MaskingParty(ids[p], PARTIES, pubs, frac_bits) for p in PARTIES}
    agg = Aggregator(run, PARTIES, pubs, frac_bits)
    agg.open_round(round_no)
    for m in members.values():
        agg.receive_key(m.announce(run, round_no))
    keys = agg.keys()
    for m in members.values():
        m.receive_keys(run, round_no, keys)
    return members


def masked_view(values: np.ndarray, ring_bits: int, frac_bits: int, seed_run: str) -> np.ndarray:
    """The carrier's masked message for `values` in a fresh round, as the coordinator receives it."""
    members = _keyed(seed_run, 1, frac_bits)
    flat = np.ascontiguousarray(values, np.float64).reshape(-1)
    msg = members["carrier"].mask_rows(seed_run, 1, "r0", values.shape, lambda lo, hi: flat[lo:hi],
                                       ring_bits=ring_bits)
    return msg.payload


def two_sample(real: np.ndarray, runs: int, per_run: int, ring_bits: int, frac_bits: int) -> dict:
    """KS two-sample: the coordinator's view with the carrier's real input vs zeros, fresh keys per run."""
    zero = np.zeros_like(real)
    a = np.concatenate([masked_view(real, ring_bits, frac_bits, f"a{k}")[:per_run] for k in range(runs)])
    b = np.concatenate([masked_view(zero, ring_bits, frac_bits, f"b{k}")[:per_run] for k in range(runs)])
    scale = 2.0 ** ring_bits
    plain_a = encode_fixed(real, frac_bits).reshape(-1)[:per_run * runs].astype(np.float64)
    plain_b = encode_fixed(zero, frac_bits).reshape(-1)[:per_run * runs].astype(np.float64)
    return {"runs": runs, "elements_per_run": per_run,
            "ks_two_sample_p": float(stats.ks_2samp(a / scale, b / scale).pvalue),
            "control_plain_ks_p": float(stats.ks_2samp(plain_a, plain_b).pvalue)}


def _stage_sums(model: FederatedALS) -> dict:
    """(round, stage) → per-user sums, rebuilt from the masked messages the coordinator received."""
    by_key: dict = {}
    for m in model.transcript:
        if m.stage == "r0" or m.stage.startswith("ap"):
            by_key.setdefault((m.round, m.stage), []).append(m)
    out = {}
    for key, msgs in by_key.items():
        total = np.zeros(msgs[0].payload.size, dtype=np.uint64)
        for m in msgs:
            np.add(total, m.payload, out=total)
        out[key] = decode_fixed(total, model.fixed_point_bits).reshape(msgs[0].shape)
    return out


def _auc(score: np.ndarray, label: np.ndarray) -> float:
    pos, neg = label.sum(), (~label).sum()
    if pos == 0 or neg == 0:
        return float("nan")
    ranks = stats.rankdata(score)
    return float((ranks[label].sum() - pos * (pos + 1) / 2) / (pos * neg))


def _probe(features: np.ndarray, labels: np.ndarray, train: np.ndarray, test: np.ndarray, ridge: float = 1.0
           ) -> np.ndarray:
    """Ridge scores for the test users, one column per target (standardised features, closed form)."""
    mu, sd = features[train].mean(0), features[train].std(0) + 1e-12
    z = (features - mu) / sd
    a = np.c_[z[train], np.ones(train.sum())]
    w = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ (labels[train] - labels[train].mean(0)))
    return np.c_[z[test], np.ones(test.sum())] @ w


def attack(users: int = 4000, factors: int = 8, iterations: int = 3, targets: int = 10, boot: int = 300,
           seed: int = 0) -> dict:
    blocks, _ = synthesize(users=users, pois=150, areas=60, topics=30, seed=seed)
    init = init_factors(users, {p: m.shape[1] for p, m in blocks.items()}, factors, seed, np.float64)
    Xs = []

    class Recording(FederatedALSParty):  # the user factors every round releases, as a party receives them
        def item_step(self, X, user_gram=None):
            if self.name == "tourism":
                Xs.append(np.array(X))
            super().item_step(X, user_gram)

    model = FederatedALS(factors=factors, iterations=iterations, dtype=np.float64, show_progress=False,
                         record_view=True, num_threads=1)
    model.fit_parties({p: Recording(p, m) for p, m in blocks.items()}, init=init)
    sums = _stage_sums(model)
    carrier = blocks["carrier"].tocsc()
    popular = np.argsort(-np.diff(carrier.indptr))[:targets]
    labels = np.asarray(blocks["carrier"][:, popular].todense() > 0)
    model_view = np.hstack(Xs)                                       # the user factors after every round
    protocol_view = np.hstack([model_view, *[sums[k] for k in sorted(sums)]])
    plain_view = sparse_residual(blocks["carrier"], init[1]["carrier"], init[0])  # unmasked carrier r0 terms
    rng = np.random.default_rng(seed)
    train = rng.random(users) < 0.5
    test = ~train
    out = {"users": users, "factors": factors, "iterations": iterations, "targets": int(targets),
           "positives_per_target_test": labels[test].sum(0).tolist(), "features": {}}
    scores = {name: _probe(f, labels.astype(float), train, test)
              for name, f in (("model_view", model_view), ("protocol_view", protocol_view),
                              ("unmasked_carrier_terms", plain_view))}
    lab = labels[test]

    def mean_auc(s, idx):
        return float(np.nanmean([_auc(s[idx, j], lab[idx, j]) for j in range(lab.shape[1])]))

    n_test = lab.shape[0]
    all_idx = np.arange(n_test)
    boots = {name: [] for name in scores}
    diff = []
    for _ in range(boot):
        idx = rng.integers(0, n_test, n_test)
        vals = {name: mean_auc(s, idx) for name, s in scores.items()}
        for name, v in vals.items():
            boots[name].append(v)
        diff.append(vals["protocol_view"] - vals["model_view"])
    for name, s in scores.items():
        lo, hi = np.percentile(boots[name], [2.5, 97.5])
        out["features"][name] = {"auc": round(mean_auc(s, all_idx), 4), "ci95": [round(lo, 4), round(hi, 4)]}
    lo, hi = np.percentile(diff, [2.5, 97.5])
    out["protocol_minus_model_auc"] = {"estimate": round(out["features"]["protocol_view"]["auc"]
                                                         - out["features"]["model_view"]["auc"], 4),
                                       "ci95": [round(lo, 4), round(hi, 4)]}
    out["gram_revealed"] = "Y^T Y (factors x factors, summed over every item of every party)"
    return out


def run(seed: int = 0) -> dict:
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    blocks, _ = synthesize(users=2000, pois=100, areas=50, topics=20, seed=seed)
    X0, Y0 = init_factors(2000, {p: m.shape[1] for p, m in blocks.items()}, 16, seed, np.float64)
    real = sparse_residual(blocks["carrier"], Y0["carrier"], X0)
    out = {"uniformity": {}, "two_sample": {}}
    for ring, frac in ((64, 32), (32, 24)):
        view = masked_view(real, ring, frac, "u")
        plain = encode_fixed(real, frac).reshape(-1)
        plain = plain if ring == 64 else plain.astype(np.uint32)
        out["uniformity"][f"ring{ring}"] = {"masked": uniformity(view, ring), "control_plain": uniformity(plain, ring)}
        out["two_sample"][f"ring{ring}"] = two_sample(real, runs=200, per_run=64, ring_bits=ring, frac_bits=frac)
    out["attack"] = attack(seed=int(rng.integers(1 << 30)))
    out["seconds"] = round(time.perf_counter() - started, 1)
    return out


def register(bench_sub) -> None:
    p = bench_sub.add_parser("privacy", help="uniformity, two-sample and interaction-inference tests of what the "
                                             "coordinator sees")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and of the attack's split")
    p.add_argument("--json", action="store_true", help="JSON only on stdout")
    p.set_defaults(func=main)


def main(args) -> int:
    print(json.dumps(run(args.seed), indent=None if args.json else 2))
    return 0

