"""Split towers: they learn, prospects' scores beat random, the coordinator sees only masked sums."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from wenlv.bench.faults.party import PartyService  # a party's mTLS service in a thread
from wenlv.privacy import secure_agg, tls
from wenlv.privacy.secure_agg import PartyUnavailable
from wenlv.training.federated_als import FederatedALSParty
from wenlv.training.remote_towers import RemoteTowerParty
from wenlv.training import evaluation, factors, towers
from wenlv.training.tower_party import TowerSide
from wenlv.training.blocks import FeatureBlocks, build_matrices
from tests.support.toy_blocks import write_toy_blocks


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    blocks = FeatureBlocks.load(write_toy_blocks(tmp_path_factory.mktemp("toy") / "features", seed=3))
    matrices = build_matrices(blocks)
    model = factors.fit(matrices, mode="central", factors=8, iterations=8)
    return blocks, matrices, model


class SpySide(TowerSide):
    """The real party side, recording each embedding batch it masked (in clear)."""

    clear: list = []

    def forward(self, run_id, round_no, stage, batch, grad=None):
        msg = super().forward(run_id, round_no, stage, batch, grad)
        self.clear.append((stage, self.name, self._released.detach().numpy().copy()))
        return msg


def _train(toy, **kwargs):
    blocks, matrices, model = toy
    frames = towers.side_frames(blocks, matrices.tokens)
    known = ~matrices.is_prospect
    result = towers.train_towers({p: f[known].reset_index(drop=True) for p, f in frames.items()},
                                 (matrices.blocks["tourism"][known] > 0).astype(np.float32),
                                 model.poi_factors, **kwargs)
    return result, frames


def test_towers_learn_and_prospects_beat_random(toy):
    blocks, matrices, model = toy
    result, frames = _train(toy, epochs=25, seed=1)
    assert result.losses[-1] < result.losses[0] - 0.1
    scores = result.embed(frames) @ model.poi_factors.T
    audience = evaluation.prospect_audiences(blocks, matrices, scores)
    assert audience["prospect_audience_precision"] > 1.5 * audience["prospect_random_precision"]
    metrics = evaluation.evaluate_scores(blocks, matrices, scores)
    assert metrics["prospect_ndcg@10"] > metrics["popularity_prospect_ndcg@10"]


def test_coordinator_sees_only_masked_sums(toy):
    blocks, matrices, model = toy
    frames = towers.side_frames(blocks, matrices.tokens)
    known = np.flatnonzero(~matrices.is_prospect)
    SpySide.clear = []
    sides = {p: SpySide(p, frames[p]) for p in towers.TOWER_PARTIES}
    result = towers.fit_tower_parties(sides, known, (matrices.blocks["tourism"][known] > 0).astype(np.float32),
                                      model.poi_factors, epochs=1, batch_size=64, record_view=True)
    view = [m for m in result.transcript if m.stage.startswith("embeddings-")]
    clear = {(stage, name): e for stage, name, e in SpySide.clear}
    assert len(view) == len(clear) == 2 * len({s for s, _ in clear}) > 0
    for stage in sorted({s for s, _ in clear}):
        msgs = {m.sender: m for m in view if m.stage == stage}
        encoded = {p: secure_agg.encode_fixed(clear[stage, p]).ravel() for p in msgs}
        for p, msg in msgs.items():
            # a masked message looks nothing like the party's fixed-point embedding
            assert np.mean(msg.payload == encoded[p]) < 0.01
            # nor like the other party's, nor like the sum
            assert np.mean(msg.payload == sum(encoded.values())) < 0.01
        total = sum(m.payload for m in msgs.values())  # masks cancel only in the sum
        assert np.allclose(secure_agg.decode_fixed(total).reshape(clear[stage, "carrier"].shape),
                           clear[stage, "carrier"] + clear[stage, "internet"], atol=1e-6)
    assert result.losses


def test_dp_noise_gives_an_accounted_epsilon(toy):
    loud, _ = _train(toy, epochs=2, noise_multiplier=2.0, seed=1)
    quiet, _ = _train(toy, epochs=2, noise_multiplier=0.8, seed=1)
    none, _ = _train(toy, epochs=2, seed=1)
    assert none.epsilon is None and none.epsilon_labels is None and loud.epsilon_labels is None
    assert 0 < loud.epsilon < quiet.epsilon < float("inf")
    assert loud.params["tower_noise_multiplier"] == 2.0
    labels, _ = _train(toy, epochs=2, grad_noise_multiplier=1.0, seed=1)
    assert labels.epsilon is None and 0 < labels.epsilon_labels < float("inf")
    assert np.isfinite(labels.losses).all()


def test_export_is_torchscript_with_spec_serving_reads(toy, tmp_path):
    result, frames = _train(toy, epochs=2)
    out = towers.export_towers(result, tmp_path / "towers")
    spec = json.loads((out / "spec.json").read_text())
    assert spec["user_tower"] == "user_tower.pt" and spec["width"] == result.width
    assert "age_band=25-34" in spec["user_features"] and "home_distance_km" in spec["user_features"]
    module, names = towers.load_user_tower(out)
    raw = np.concatenate([result.specs[p].raw_matrix(frames[p]) for p in sorted(frames)], axis=1)
    with torch.no_grad():
        exported = module(torch.from_numpy(raw)).numpy()
    assert np.allclose(exported, result.embed(frames), atol=1e-5)
    # serving's loader turns a side-feature dict into the same vector
    serving_towers = pytest.importorskip("wenlv.serving.towers")
    tower = serving_towers.load_user_tower(out, result.width)
    row = {**frames["carrier"].iloc[0].to_dict(), **frames["internet"].iloc[0].to_dict()}
    assert np.allclose(tower.embed(row), exported[0], atol=1e-5)


def test_misaligned_or_empty_inputs_are_refused(toy):
    blocks, matrices, model = toy
    frames = towers.side_frames(blocks, matrices.tokens)
    with pytest.raises(Exception, match="not aligned"):
        towers.train_towers({"carrier": frames["carrier"], "internet": frames["internet"].iloc[:5]},
                            np.ones((len(frames["carrier"]), model.poi_factors.shape[0])), model.poi_factors)
    with pytest.raises(Exception, match="at least two users"):
        towers.train_towers(frames, np.zeros((len(frames["carrier"]), model.poi_factors.shape[0])), model.poi_factors)


def test_towers_over_party_services_equal_in_process(toy, tmp_path):
    """The same fit through RemoteTowerParty handles on mutual-TLS services (in threads here;
    tests/test_remote_pipeline.py runs them as processes): the same losses and weights, bit for bit."""
    blocks, matrices, model = toy
    frames = towers.side_frames(blocks, matrices.tokens)
    rows = np.flatnonzero(~matrices.is_prospect)
    targets = (matrices.blocks["tourism"][rows] > 0).astype(np.float32)
    settings = {"epochs": 2, "batch_size": 32, "seed": 2, "noise_multiplier": 0.3}
    local = towers.fit_tower_parties({p: TowerSide(p, frames[p]) for p in towers.TOWER_PARTIES}, rows, targets,
                                     model.poi_factors, **settings)
    tls.make_deployment(tmp_path, towers.TOWER_PARTIES, {p: ["127.0.0.1"] for p in towers.TOWER_PARTIES})
    services = {p: PartyService(FederatedALSParty(p, sp.csr_matrix((len(matrices.tokens), 1))), tmp_path,
                                towers=TowerSide(p, frames[p], state_dir=tmp_path / p)) for p in towers.TOWER_PARTIES}
    handles = {p: RemoteTowerParty(p, s.url, tmp_path, timeout=60) for p, s in services.items()}
    try:
        remote = towers.fit_tower_parties(handles, rows, targets, model.poi_factors, **settings)
    finally:
        for p in handles:
            handles[p].close()
            services[p].stop()
    assert remote.losses == local.losses
    for p in towers.TOWER_PARTIES:
        for key, value in local.towers[p].state_dict().items():
            assert torch.equal(remote.towers[p].state_dict()[key], value), (p, key)
        assert remote.saved[p] == str(tmp_path / p / "towers" / f"{remote.params['tower_run_id']}" / f"{p}_tower.pt")


class Vanishing(TowerSide):
    """A party whose service goes away at its third batch."""

    def forward(self, run_id, round_no, stage, batch, grad=None):
        if stage == "embeddings-3":
            raise PartyUnavailable(f"{self.name} went away")
        return super().forward(run_id, round_no, stage, batch, grad)


def test_a_party_going_away_aborts_the_fit_with_nothing_released(toy):
    blocks, matrices, model = toy
    frames = towers.side_frames(blocks, matrices.tokens)
    rows = np.flatnonzero(~matrices.is_prospect)
    sides = {"carrier": Vanishing("carrier", frames["carrier"]), "internet": TowerSide("internet", frames["internet"])}
    with pytest.raises(secure_agg.SecureAggError, match="tower training aborted: carrier went away"):
        towers.fit_tower_parties(sides, rows, (matrices.blocks["tourism"][rows] > 0).astype(np.float32),
                                 model.poi_factors, epochs=2, batch_size=32)
    for side in sides.values():
        assert not side._masking._pair_keys   # the round's keys are forgotten: no mask is used again
