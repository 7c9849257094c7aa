"""The remote coordinator's own view (training.remote_pipeline.tourism_view): from the tourism
party's folder alone — its blocks, the carrier's token list with no other column, the manifest —
it derives the same prospects as the carrier and the same test-window metrics as the full view."""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wenlv.cli import main as wenlv_main
from wenlv.features.contracts import PARTIES
from wenlv.privacy import tls
from wenlv.settings import reset_settings
from wenlv.training import evaluation, registry, tracking
from wenlv.training.als_data import load_party_block, load_users
from wenlv.training.blocks import FeatureBlocks, build_matrices
from wenlv.training.bundle import ModelBundle
from wenlv.training.factors import COMPUTE_DTYPE
from wenlv.training.federated_als import FederatedALS, init_factors
from wenlv.training.pipeline import TrainConfig
from wenlv.training.remote_pipeline import tourism_view
from wenlv.errors import WenlvError
from tests.support.toy_blocks import write_toy_blocks

ROOT = Path(__file__).resolve().parents[1]


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


class _Service:
    """`wenlv party serve` (training only) for one party on loopback."""

    def __init__(self, party, data, certs, log, timeout=180.0):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "OPENBLAS_NUM_THREADS": "1"}
        with open(log, "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "wenlv.cli", "party", "serve", "--party", party,
                                          "--data", str(data), "--listen", f"127.0.0.1:{self.port}", "--tls",
                                          str(certs), "--state", str(log.parent / f"{party}-state")],
                                         stdout=subprocess.PIPE, stderr=err, env=env)
        deadline, line = time.monotonic() + timeout, b""
        while time.monotonic() < deadline and self.proc.poll() is None:
            if select.select([self.proc.stdout], [], [], 1.0)[0]:
                line = self.proc.stdout.readline()
                if b"listening" in line:
                    break
        if b"listening" not in line:
            self.stop()
            raise RuntimeError(f"party {party} did not start: {log.read_text(errors='replace')[-2000:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.proc.stdout.close()


@pytest.mark.slow
def test_train_over_party_services_is_logged_and_registered(tmp_path, monkeypatch, capsys):
    """`wenlv train --parties name=URL…`: the fit over three party processes is logged to MLflow and
    registered; the version records each party's endpoint and pinned certificate fingerprint, and
    its factors equal the in-process federated fit on the same blocks."""
    full = write_toy_blocks(tmp_path / "full", n_users=120)
    own = _tourism_folder(full, tmp_path / "own")
    certs = tmp_path / "certs"
    tls.make_deployment(certs, PARTIES)
    services = {}
    try:
        for p in PARTIES:
            services[p] = _Service(p, full, certs, tmp_path / f"{p}.log")
        monkeypatch.setenv("WENLV_PARTY_TLS", str(certs))
        reset_settings()
        tracking_uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
        parties_arg = ",".join(f"{p}={services[p].url}" for p in PARTIES)
        capsys.readouterr()
        assert wenlv_main(["train", "--features", str(own), "--parties", parties_arg, "--factors", "4",
                           "--iterations", "2", "--seed", "3", "--tracking-uri", tracking_uri,
                           "--out", str(tmp_path / "run")]) == 0
        out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    finally:
        for s in services.values():
            s.stop()
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
