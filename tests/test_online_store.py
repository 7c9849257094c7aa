"""The online store, on real Redis and on SQLite alike: versioned keys, TTLs, counters,
materialisation from a bundle + feature blocks, no personal data, and the circuit breaker."""
import re
import time

import numpy as np
import pandas as pd
import pytest

from wenlv.features import contracts
from wenlv.serving.materialize import materialize
from wenlv.serving.online_store import ResilientStore, StoreUnavailable, UserRecord
from wenlv.bench.serving_fixtures import synthetic_bundle
from tests.support.stores import make_store
from wenlv.bench.private_redis import PrivateRedis

PHONE = re.compile(rb"(?<![0-9a-f])1[3-9]\d{9}(?![0-9a-f])")  # a mainland mobile number on its own


@pytest.fixture(params=["sqlite", pytest.param("redis", marks=pytest.mark.redis)])
def store(request, tmp_path):
    url = request.getfixturevalue("redis_url") if request.param == "redis" else None
    s = make_store(request.param, tmp_path, url)
    yield s
    s.delete_prefix(s.prefix)


def write_side_features(root, tokens):
    rng = np.random.default_rng(0)
    carrier = pd.DataFrame({"token": tokens, "home_distance_km": rng.uniform(5, 900, len(tokens)),
                            "trip_days": rng.integers(1, 9, len(tokens)).astype(float),
                            "age_band": np.array(contracts.AGE_BANDS)[rng.integers(0, 6, len(tokens))],
                            "arpu_tier": rng.integers(1, 6, len(tokens))})
    (root / "carrier").mkdir(parents=True)
    carrier.to_parquet(root / "carrier" / "user_features.parquet")
    return carrier


def test_user_records_are_versioned(store):
    vec = np.arange(4, dtype=np.float32)
    store.put_users("1", [("tok", UserRecord(vec, ["P1"], {"a": 1}))])
    store.put_users("2", [("tok", UserRecord(vec * 2, ["P2"], {}))])
    one, two = store.get_user("1", "tok"), store.get_user("2", "tok")
    np.testing.assert_array_equal(one.vector, vec)
    np.testing.assert_array_equal(two.vector, vec * 2)
    assert one.visited == ["P1"] and two.visited == ["P2"] and one.side == {"a": 1}
    assert store.get_user("3", "tok") is None
    assert all(k.startswith(store.prefix + "m:") for k in store.scan_keys(store.prefix))


def test_ttls_and_frequency_caps(store):
    store.put_users("1", [("tok", UserRecord(None, [], {}))], ttl_s=3600)
    assert 3500 < store.ttl(store.user_key("1", "tok")) <= 3600
    assert [store.incr_frequency("t1", "c1", "tok", ttl_s=1) for _ in range(3)] == [1, 2, 3]
    assert store.get_frequency("t1", "c1", "tok") == 3
    assert store.get_frequency("t2", "c1", "tok") == 0  # another tenant's counter
    time.sleep(1.2)
    assert store.get_frequency("t1", "c1", "tok") == 0
    assert store.incr_frequency("t1", "c1", "tok", ttl_s=60) == 1  # the window restarts


def test_materialize_writes_vectors_visits_and_side_features_without_personal_data(store, tmp_path):
    bundle = synthetic_bundle(n_pois=30, n_users=40, factors=8, seed=1, version="7")
    newcomers = ["c0ffee" + str(i) for i in range(5)]  # side features but no factors: cold start
    write_side_features(tmp_path / "features", list(bundle.users.token[:10]) + newcomers)
    result = materialize(bundle, "7", store, tmp_path / "features", progress=False)
    assert result["users"] == 45 and result["with_factors"] == 40
    assert store.materialized("7")["users"] == 45

    tok = bundle.users.token[3]
    rec = store.get_user("7", tok)
    np.testing.assert_allclose(rec.vector, bundle.user_factors[3])
    assert sorted(rec.visited) == sorted(bundle.history.loc[bundle.history.token == tok, "poi_id"])
    assert set(rec.side) == {"home_distance_km", "trip_days", "age_band", "arpu_tier"}
    cold = store.get_user("7", newcomers[0])
    assert cold.vector is None and cold.side["age_band"] in contracts.AGE_BANDS

    keys = store.scan_keys(store.prefix)
    assert len(keys) == 46  # 45 users + the version's meta
    allowed = set(bundle.users.token) | set(newcomers)
    for key in keys:
        parts = key[len(store.prefix):].split(":")
        assert parts[:2] == ["m", "7"]
        assert parts[2] == "meta" or (parts[2] == "u" and parts[3] in allowed)
        if parts[2] == "u":
            rec = UserRecord.decode(store.get(key))
            assert set(rec.side) <= set(contracts.CARRIER_USER_FEATURES.columns) - contracts.personal_columns()
            assert all(not PHONE.search(str(v).encode()) for v in rec.side.values() if isinstance(v, str))
            assert all(re.fullmatch(r"P\d{5}", p) for p in rec.visited)


def test_materialize_refuses_personal_columns(store, tmp_path):
    from wenlv.errors import WenlvError

    bundle = synthetic_bundle(n_pois=10, n_users=5, factors=4, seed=2)
    side = write_side_features(tmp_path / "f", list(bundle.users.token))
    side.assign(phone="13800138000").to_parquet(tmp_path / "f" / "carrier" / "user_features.parquet")
    with pytest.raises(WenlvError, match="phone"):
        materialize(bundle, "1", store, tmp_path / "f", progress=False)
    assert store.scan_keys(store.prefix) == []


def test_circuit_breaker_fails_fast_and_recovers():
    server = PrivateRedis().start()
    try:
        from wenlv.serving.online_store import RedisStore

        store = ResilientStore(RedisStore(server.url, prefix="cb:", timeout_s=0.05), first_backoff_s=0.1, max_backoff_s=0.4)
        store.store.put_users("1", [("tok", UserRecord(np.ones(2, dtype=np.float32), [], {}))])
        assert store.get_user("1", "tok") is not None
        server.stop()
        with pytest.raises(StoreUnavailable):
            store.get_user("1", "tok")
        started = time.perf_counter()
        for _ in range(100):  # circuit open: no socket work at all
            with pytest.raises(StoreUnavailable):
                store.get_user("1", "tok")
        assert time.perf_counter() - started < 0.1
        server.start()  # same port, empty (no persistence)
        deadline = time.monotonic() + 5
        while True:
            try:
                assert store.get_user("1", "tok") is None
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline, "the store did not recover"
                time.sleep(0.05)
    finally:
        server.stop()


def test_recommendation_log_survives_a_store_outage():
    from wenlv.serving.online_store import RedisStore
    from wenlv.serving.reclog import RecommendationLog

    server = PrivateRedis().start()
    try:
        raw = RedisStore(server.url, prefix="rl:", timeout_s=0.1)
        rec_log = RecommendationLog(raw, interval_s=0.05, max_pending=3)
        rec_log.add("hz", "a" * 32, {"poi_ids": ["P1"]})
        deadline = time.monotonic() + 5
        while raw.get_recommendation("hz", "a" * 32) is None:
            assert time.monotonic() < deadline, "the background flush did not write"
            time.sleep(0.02)
        server.stop()
        for i in range(5):
            rec_log.add("hz", f"{i:032x}", {"poi_ids": [f"P{i}"]})
        time.sleep(0.3)  # flushes fail meanwhile: lists stay pending, the oldest beyond 3 are dropped and counted
        assert rec_log.pending == 3 and rec_log.dropped == 2
        assert rec_log.get("hz", f"{4:032x}") == {"poi_ids": ["P4"]}
        server.start()
        deadline = time.monotonic() + 5
        while rec_log.pending:
            assert time.monotonic() < deadline, "pending lists were not written after recovery"
            time.sleep(0.05)
        assert [raw.get_recommendation("hz", f"{i:032x}") is not None for i in range(5)] == [False, False, True, True, True]
        rec_log.close()
    finally:
        server.stop()
