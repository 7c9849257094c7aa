"""The remote coordinator's own view (training.remote_pipeline.tourism_view): from the tourism
party's folder alone — its blocks, the carrier's token list with no other column, the manifest —
it derives the same prospects as the carrier and the same test-window metrics as the full view."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from wenlv.cli import main as wenlv_main
from wenlv.features.contracts import PARTIES
from wenlv.privacy import tls
from wenlv.privacy.secure_agg import ProtocolError
from wenlv.settings import reset_settings
from wenlv.training import evaluation, registry, towers, tracking
from wenlv.training.als_data import load_party_block, load_users
from wenlv.training.blocks import FeatureBlocks, build_matrices
from wenlv.training.bundle import ModelBundle
from wenlv.training.factors import COMPUTE_DTYPE
from wenlv.training.federated_als import FederatedALS, init_factors
from wenlv.training.pipeline import TrainConfig, fit_cold_start_towers
from wenlv.training.remote import WireStats
from wenlv.training.remote_pipeline import tourism_view
from wenlv.training.remote_towers import RemoteTowerParty
from wenlv.training.tower_party import TowerSide
from wenlv.errors import WenlvError
from tests.support.party_services import PartyProcess, PartyProcesses
from tests.support.toy_blocks import write_toy_blocks

def _tourism_folder(full, dest):
    shutil.copytree(full / "tourism", dest / "tourism")
    (dest / "carrier").mkdir(parents=True)
    users = pd.read_parquet(full / "carrier" / "users.parquet")[["token"]]
    users.to_parquet(dest / "carrier" / "users.parquet", index=False)
    shutil.copy(full / "manifest.json", dest / "manifest.json")
    return dest


def test_tourism_view_equals_the_full_view_on_tourism_metrics(tmp_path):
    full = write_toy_blocks(tmp_path / "full", n_users=200)
    own = _tourism_folder(full, tmp_path / "own")
    blocks, matrices = build_matrices_of(full)
    t_blocks, t_matrices = tourism_view(own)
    assert list(t_matrices.tokens) == list(matrices.tokens)
    assert np.array_equal(t_matrices.is_prospect, matrices.is_prospect)    # as the carrier marked them
    assert 0 < t_matrices.is_prospect.sum() < len(t_matrices.tokens)
    assert (t_matrices.blocks["tourism"] != matrices.blocks["tourism"]).nnz == 0
    assert set(t_matrices.blocks) == {"tourism"}                             # no partner block at all
    rng = np.random.default_rng(0)
    scores = rng.random((len(matrices.tokens), len(matrices.items["tourism"])))
    full_m = evaluation.evaluate_scores(blocks, matrices, scores)
    own_m = evaluation.evaluate_scores(t_blocks, t_matrices, scores)
    for key in ("ndcg@10", "recall@10", "known_ndcg@10", "prospect_ndcg@10", "prospect_audience_precision",
                "prospect_lift_vs_random"):
        assert own_m[key] == pytest.approx(full_m[key], nan_ok=True), key


def test_tourism_view_needs_the_manifest(tmp_path):
    full = write_toy_blocks(tmp_path / "full", n_users=50)
    own = _tourism_folder(full, tmp_path / "own")
    (own / "manifest.json").unlink()
    with pytest.raises(WenlvError, match="manifest.json is missing"):
        tourism_view(own)


def build_matrices_of(folder):
    blocks = FeatureBlocks.load(folder)
    return blocks, build_matrices(blocks)


@pytest.mark.slow
def test_train_over_party_services_is_logged_and_registered(tmp_path, monkeypatch, capsys):
    """`wenlv train --parties name=URL…`: the fit over three party processes is logged to MLflow and
    registered; the version records each party's endpoint and pinned certificate fingerprint, and
    its factors equal the in-process federated fit on the same blocks."""
    full = write_toy_blocks(tmp_path / "full", n_users=120)
    own = _tourism_folder(full, tmp_path / "own")
    certs = tmp_path / "certs"
    tls.make_deployment(certs, PARTIES)
    with PartyProcesses() as services:
        for p in PARTIES:
            services[p] = PartyProcess(p, full, certs, tmp_path / f"{p}.log", state=tmp_path / f"{p}-state")
        monkeypatch.setenv("WENLV_PARTY_TLS", str(certs))
        reset_settings()
        tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
        capsys.readouterr()
        assert wenlv_main(["train", "--features", str(own), "--parties", services.urls(), "--factors", "4",
                           "--iterations", "2", "--seed", "3", "--tower-epochs", str(TOWER_EPOCHS),
                           "--tracking-uri", tracking_uri, "--out", str(tmp_path / "run")]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        poi_factors = ModelBundle.load(out["bundle_dir"]).poi_factors
        direct = _towers_over_services(services, certs, own, poi_factors)
        # the tourism party has no bottom tower; a step out of order is refused, named; a replay too
        tourism = RemoteTowerParty("tourism", services["tourism"].url, certs, timeout=60)
        with pytest.raises(ProtocolError, match="not a tower step"):
            tourism.describe()
        tourism.close()
        carrier = RemoteTowerParty("carrier", services["carrier"].url, certs, timeout=60)
        with pytest.raises(WenlvError, match="a gradient came before any embeddings"):
            carrier.backward(np.zeros((2, 4), np.float32))
        carrier.channel._seq -= 1
        with pytest.raises(ProtocolError, match="replayed"):
            carrier.describe()
        carrier.close()
    assert out["model_version"] == 1 and out["promoted"] is False and out["checks"]["artifacts_clean"]
    run = tracking.client(tracking_uri).get_run(out["run_id"])
    for p in PARTIES:
        assert run.data.params[f"party_{p}_url"] == services[p].url
        assert run.data.params[f"party_{p}_cert_sha256"] == tls.fingerprint(certs / f"{p}.pem")
        assert run.data.metrics[f"wire_bytes_sent_{p}"] > 0
    assert run.data.tags["wenlv.deployment"] == "party-services"
    assert "federated_matches_central" not in registry.run_checks(tracking.client(tracking_uri), out["run_id"])
    bundle = ModelBundle.load(registry.download_bundle(out["model_version"], tracking_uri, tmp_path / "dl"))
    tokens = load_users(full)
    assert list(bundle.users["token"]) == list(tokens)
    mats = {p: load_party_block(full, p, tokens).matrix for p in PARTIES}
    init = init_factors(len(tokens), {p: m.shape[1] for p, m in mats.items()}, 4, 3, COMPUTE_DTYPE)
    in_process = FederatedALS(factors=4, iterations=2, random_state=3, dtype=COMPUTE_DTYPE, regularization=1.0,
                              fixed_point_bits=TrainConfig().fixed_point_bits, show_progress=False).fit(mats, init=init)
    np.testing.assert_allclose(bundle.user_factors, in_process.user_factors, rtol=0, atol=1e-6)
    np.testing.assert_allclose(bundle.poi_factors, in_process.item_factors["tourism"], rtol=0, atol=1e-6)

    # the split towers: trained over the carrier's and the internet platform's services, in the
    # version's bundle as in process, bit for bit the in-process towers on the same data and seed
    assert bundle.towers_dir is not None and (bundle.towers_dir / "user_tower.pt").is_file()
    spec = json.loads((bundle.towers_dir / "spec.json").read_text())
    assert sorted(spec["parties"]) == ["carrier", "internet"]
    blocks, matrices = build_matrices_of(full)
    local = fit_cold_start_towers({p: TowerSide(p, f) for p, f in towers.side_frames(blocks, tokens).items()},
                                  blocks, matrices, bundle.poi_factors,
                                  TrainConfig(seed=3, tower_epochs=TOWER_EPOCHS, progress=False), tmp_path / "local")[0]
    for p in ("carrier", "internet"):
        remote_state = torch.load(bundle.towers_dir / f"{p}_tower.pt")
        for key, value in local.towers[p].state_dict().items():
            assert torch.equal(remote_state[key], value), (p, key)
        kept = run.data.params[f"party_{p}_kept_tower_at"]
        assert kept.startswith(str(tmp_path / f"{p}-state")) and Path(kept).is_file()   # on its own disk
        assert run.data.metrics[f"tower_wire_bytes_received_{p}"] > 0
    assert "party_tourism_kept_tower_at" not in run.data.params      # the coordinator has no bottom tower
    assert run.data.metrics["tower_prospect_ndcg_at_10"] == pytest.approx(
        evaluation.evaluate_scores(blocks, matrices, local.embeddings @ bundle.poi_factors.T,
                                   prefix="tower_")["tower_prospect_ndcg@10"])

    # the same with DP noise on both directions and small batches: the parties' own noise
    # generators give the in-process numbers too; bytes per message as docs/deployment.md states
    result, stats, (rows, targets) = direct
    frames = towers.side_frames(blocks, tokens)
    local = towers.fit_tower_parties({p: TowerSide(p, frames[p]) for p in ("carrier", "internet")}, rows, targets,
                                     poi_factors, **DIRECT)
    assert result.losses == local.losses
    for p in ("carrier", "internet"):
        for key, value in local.towers[p].state_dict().items():
            assert torch.equal(result.towers[p].state_dict()[key], value), (p, key)
    _assert_tower_bytes(stats, int((targets.sum(axis=1) > 0).sum()), poi_factors.shape[1])


TOWER_EPOCHS = 3
DIRECT = {"epochs": 2, "batch_size": 16, "seed": 5, "noise_multiplier": 0.5, "grad_noise_multiplier": 0.5}
HEADER = 1024  # bytes of JSON skeleton per body, at most (run id, stage, dtype, shape, signature, digest)


def _towers_over_services(services, certs, own, poi_factors):
    """fit_tower_parties with RemoteTowerParty handles on the running services, counting bytes."""
    _, matrices = tourism_view(own)
    rows = np.flatnonzero(~matrices.is_prospect)
    targets = (matrices.blocks["tourism"][rows] > 0).astype(np.float32).toarray()
    stats = WireStats()
    handles = {p: RemoteTowerParty(p, services[p].url, certs, timeout=120, stats=stats) for p in ("carrier", "internet")}
    try:
        result = towers.fit_tower_parties(handles, rows, targets, poi_factors, **DIRECT)
    finally:
        for h in handles.values():
            h.close()
    return result, stats, (rows, targets)


def _assert_tower_bytes(stats, m: int, width: int) -> None:
    """Per message, bytes = payload (the formula) + a bounded header: a batch of b users costs
    8·b down (its row positions) and 8·b·width up (the masked embeddings, 64-bit ring), plus the
    previous batch's gradient 4·b·width down (float32) on the same request; the final batch's
    gradient goes alone (`backward`, once per fit)."""
    parties, epochs, size = 2, DIRECT["epochs"], DIRECT["batch_size"]
    forward, backward = stats.by_stage["towers.forward"], stats.by_stage["towers.backward"]
    calls = parties * epochs * -(-m // size)
    last = m - (-(-m // size) - 1) * size   # users in an epoch's final batch
    assert forward["calls"] == calls and backward["calls"] == parties
    users = parties * epochs * m            # Σ batch sizes over every forward
    assert 8 * users * width < forward["received"] < 8 * users * width + calls * HEADER
    grads = 4 * (users - parties * last) * width
    assert 8 * users + grads < forward["sent"] < 8 * users + grads + calls * HEADER
    assert 4 * parties * last * width < backward["sent"] < 4 * parties * last * width + parties * HEADER
    assert backward["received"] < parties * HEADER
    per_call = {k: {"sent": v["sent"] / v["calls"], "received": v["received"] / v["calls"]}
                for k, v in stats.by_stage.items()}
    print(json.dumps({"batch": size, "width": width, "per_call": per_call}))
