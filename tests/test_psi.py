"""PSI: the group, the protocol in memory, and the same protocol run in Spark with files as messages."""
from __future__ import annotations

import hashlib
import random

import pytest
from wenlv.privacy import psi, ristretto
from wenlv.privacy.psi_align import new_run_key, user_token
from wenlv.errors import WenlvError


def phones(n: int, rng: random.Random, prefix: str = "86138") -> list[str]:
    return [f"{prefix}{rng.randrange(10**8):08d}" for _ in range(n)]


def sets_with_overlap(rng, n_a=120, n_b=150, common=45):
    pool = list(dict.fromkeys(phones(n_a + n_b, rng)))
    shared, rest = pool[:common], pool[common:]
    a = shared + rest[: n_a - common]
    b = shared + rest[n_a - common: n_a - common + n_b - common]
    rng.shuffle(a)
    rng.shuffle(b)
    return a, b, set(shared)


def _scalar(n: int) -> bytes:
    return (n % 2**256).to_bytes(32, "little")


def test_hash_to_group_gives_valid_ristretto255_encodings():
    for i in range(20):
        point = psi.hash_to_group(f"8613800000{i:03d}".encode())
        assert len(point) == 32 and ristretto.is_valid_point(point)
    assert len({psi.hash_to_group(f"8613800000{i:03d}".encode()) for i in range(200)}) == 200


def test_the_group_has_prime_order_l():
    # ristretto255 has no cofactor: for any element P, (L+1)·P = P and (2L+1)·P = P (the
    # scalar is used as is, below 2^255), i.e. L·P is the identity; 2·P differs from P.
    # Also (L−1)·P + P would be the identity: (L−1)·P = −P, whose encoding differs from P's.
    l = psi.GROUP_ORDER
    for i in range(10):
        point = psi.hash_to_group(f"8613900000{i:03d}".encode())
        assert ristretto.scalarmult(_scalar(l + 1), point) == point
        assert ristretto.scalarmult(_scalar(2 * l + 1), point) == point
        assert ristretto.scalarmult(_scalar(2), point) != point
        assert ristretto.scalarmult(_scalar(l - 1), point) != point
    # The multiple L·P is the identity, which libsodium refuses to return.
    with pytest.raises(ristretto.RistrettoError):
        ristretto.scalarmult(_scalar(l), psi.hash_to_group(b"8613900000000"))


def test_scalars_are_reduced_mod_l_and_secrets_are_fresh():
    assert ristretto.scalar_reduce((psi.GROUP_ORDER + 5).to_bytes(64, "little")) == _scalar(5)
    secrets = {psi.new_secret() for _ in range(50)}
    assert len(secrets) == 50
    assert all(int.from_bytes(s, "little") < psi.GROUP_ORDER for s in secrets)


def test_invalid_encodings_are_refused_by_position_never_by_value():
    secret = psi.new_secret()
    good = [psi.hash_to_group(f"8613700000{i:03d}".encode()) for i in range(4)]
    # Not canonical: a field element ≥ p (all ones), a "negative" one (low bit set); and the
    # identity, a valid encoding whose every multiple is the identity, which libsodium refuses.
    bad = {"non-canonical": b"\xff" * 32, "negative": (1).to_bytes(32, "little"), "identity": bytes(32)}
    for name, point in bad.items():
        assert ristretto.is_valid_point(point) == (name == "identity")
        with pytest.raises(psi.PsiError) as info:
            psi.blind(point, secret)
        assert "valid" in str(info.value) and point.hex() not in str(info.value)
        with pytest.raises(psi.PsiError) as info:
            psi.blind_all(good[:2] + [point] + good[2:], secret)
        assert "position 2" in str(info.value) and point.hex() not in str(info.value)
    with pytest.raises(psi.PsiError) as info:
        psi.blind_all(good + [good[0][:31]], secret)
    assert "position 4" in str(info.value)


def test_batch_helpers_equal_the_one_item_functions():
    secret = psi.new_secret()
    ids = [f"86136{i:08d}" for i in range(50)]
    hashed = psi.hash_all(ids)
    assert hashed == [psi.hash_to_group(psi.normalise_phone(p)) for p in ids]
    assert psi.hash_and_blind_all(ids, secret) == [psi.hash_and_blind(psi.normalise_phone(p), secret) for p in ids]
    assert psi.blind_all(hashed, secret) == psi.hash_and_blind_all(ids, secret)
    assert psi.blind_all([bytearray(p) for p in hashed], secret) == psi.blind_all(hashed, secret)
    assert psi.hash_all([]) == psi.blind_all([], secret) == psi.hash_and_blind_all([], secret) == []
    points = psi.blind_all(hashed, secret)
    assert psi.tokens_for(points, "sid") == [psi.session_token("sid", p) for p in points]


def test_hash_to_group_is_deterministic_and_domain_separated():
    x = b"8613812345678"
    assert psi.hash_to_group(x) == psi.hash_to_group(x)
    assert psi.hash_to_group(x) != psi.hash_to_group(b"8613812345679")
    assert psi.hash_to_group(x) != ristretto.from_hash(hashlib.sha512(x).digest())
    assert b"v2" in psi.HASH_DOMAIN and b"ristretto255" in psi.HASH_DOMAIN and b"v2" in psi.TOKEN_DOMAIN


def test_blinding_commutes():
    a, b = psi.new_secret(), psi.new_secret()
    p = psi.hash_to_group(b"8613800000001")
    assert psi.blind(psi.blind(p, a), b) == psi.blind(psi.blind(p, b), a)


def test_phone_forms_normalise_to_one_identifier():
    assert psi.normalise_phone("+86 138-1234-5678") == psi.normalise_phone("8613812345678")


def test_errors_never_carry_the_value():
    secret_value = "86139x0000007"
    with pytest.raises(psi.PsiError) as info:
        psi.normalise_phone(secret_value)
    assert secret_value not in str(info.value) and "x0000007" not in str(info.value)
    with pytest.raises(psi.PsiError) as info:
        psi.blind(bytes(32), psi.new_secret())  # the identity's encoding: the product is the identity, refused
    assert "valid" in str(info.value)


@pytest.mark.parametrize("seed", [1, 2])
def test_in_memory_intersection_is_exact_both_ways_and_tokens_agree(seed):
    rng = random.Random(seed)
    a, b, shared = sets_with_overlap(rng)
    a_tokens, b_tokens = psi.run_in_memory("session-x", a, b)
    assert {a[i] for i in a_tokens} == shared
    assert {b[i] for i in b_tokens} == shared
    by_phone_a = {a[i]: t for i, t in a_tokens.items()}
    by_phone_b = {b[i]: t for i, t in b_tokens.items()}
    assert by_phone_a == by_phone_b


def test_fresh_secrets_give_unlinkable_tokens_across_sessions():
    rng = random.Random(3)
    a, b, shared = sets_with_overlap(rng, 40, 40, 20)
    first, _ = psi.run_in_memory("same-id", a, b)
    second, _ = psi.run_in_memory("same-id", a, b)
    assert set(first) == set(second)  # same matches
    assert not set(first.values()) & set(second.values())  # but no token in common


def test_responses_are_the_requests_reblinded_in_order_and_requests_are_shuffled():
    party = psi.PsiParty("s", [f"861380000{i:04d}" for i in range(64)])
    request = party.request()
    in_input_order = psi.hash_and_blind_all(party.phones, party.secret)
    assert sorted(request) == sorted(in_input_order) and request != in_input_order
    other = psi.PsiParty("s", ["8613900000000"])
    assert other.respond(request) == [psi.blind(p, other.secret) for p in request]


def test_user_tokens_are_keyed():
    k1, k2 = new_run_key(), new_run_key()
    assert user_token(k1, "8613800000001") == user_token(k1, "8613800000001")
    assert user_token(k1, "8613800000001") != user_token(k2, "8613800000001")


@pytest.mark.spark
def test_spark_psi_through_exchange_files_matches_the_truth(spark, tmp_path):
    from wenlv.spark_jobs import psi_exchange

    rng = random.Random(11)
    a, b, shared = sets_with_overlap(rng, 150, 110, 60)
    a_df = spark.createDataFrame([(("+" + p) if i % 3 == 0 else p,) for i, p in enumerate(a)], "phone string")
    b_df = spark.createDataFrame([(p,) for p in b], "phone string").repartition(3)

    def run_session(name):
        psi_exchange.open_session(tmp_path, name, ("a", "b"))
        sa = psi_exchange.request(spark, tmp_path, name, "a", a_df)
        sb = psi_exchange.request(spark, tmp_path, name, "b", b_df)
        psi_exchange.respond(spark, tmp_path, sa, "b")
        psi_exchange.respond(spark, tmp_path, sb, "a")
        got_a = {r.phone: r.token for r in psi_exchange.finish(spark, tmp_path, sa, "b").collect()}
        got_b = {r.phone: r.token for r in psi_exchange.finish(spark, tmp_path, sb, "a").collect()}
        return got_a, got_b

    got_a, got_b = run_session("s1")
    assert set(got_a) == shared and set(got_b) == shared
    assert got_a == got_b
    again, _ = run_session("s2")
    assert set(again) == shared and not set(again.values()) & set(got_a.values())

    # The messages hold 32-byte points only, and the request is not in the input order.
    request = spark.read.parquet(str(tmp_path / "s1" / "a.request.parquet"))
    assert request.columns == ["point"]
    assert {len(r.point) for r in request.collect()} == {32}
    response = spark.read.parquet(str(tmp_path / "s1" / "b.response.parquet"))
    assert sorted(response.columns) == ["point", "reblinded"] and response.count() == len(a)


def test_a_missing_libsodium_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(ristretto, "_CANDIDATES", ("/nonexistent/libsodium.so.23",))
    with pytest.raises(ristretto.RistrettoError) as info:
        ristretto._open()
    assert "libsodium23" in str(info.value) and "WENLV_LIBSODIUM" in str(info.value)


def test_a_session_of_another_protocol_version_is_refused(tmp_path):
    import json

    from wenlv.spark_jobs import psi_exchange

    sid = psi_exchange.open_session(tmp_path, "s", ("a", "b"))
    assert psi_exchange.read_session_id(tmp_path, "s") == sid
    path = tmp_path / "s" / "session.json"
    opened = json.loads(path.read_text())
    del opened["protocol"]  # as v1 (ed25519) wrote it
    path.write_text(json.dumps(opened))
    with pytest.raises(psi.PsiError, match="protocol"):
        psi_exchange.read_session_id(tmp_path, "s")


def test_at_once_keeps_order_and_raises_the_first_failure():
    import threading

    from wenlv.spark_jobs.party_features import at_once

    barrier = threading.Barrier(3, timeout=10)  # passes only if all three run at the same time
    assert at_once(*[(lambda i=i: (barrier.wait(), i)[1]) for i in range(3)]) == [0, 1, 2]

    def fail():
        raise psi.PsiError("boom")

    with pytest.raises(psi.PsiError, match="boom"):
        at_once(lambda: 1, fail)


@pytest.mark.spark
def test_spark_psi_with_hashed_phones_reused_across_sessions(spark, tmp_path):
    """The carrier's way: H(phone) computed once (secret-free), blinded per session with that
    session's secret; flags choose each session's set. Same intersections as hashing per session."""
    import pyarrow.parquet as pq
    from pyspark.sql import functions as F

    from wenlv.spark_jobs import psi_exchange

    rng = random.Random(12)
    hub, partner, shared = sets_with_overlap(rng, 160, 90, 50)
    consenting = set(hub[::2])
    rows = [(p, p in consenting) for p in hub] + [("+" + hub[0], False)]  # a duplicate in another form
    hub_df = spark.createDataFrame(rows, "phone string, consent boolean")
    partner_df = spark.createDataFrame([(p,) for p in partner], "phone string")
    hashed = psi_exchange.hash_phones(spark, hub_df, "consent")
    assert hashed.count() == len(hub) and sorted(hashed.columns) == ["consent", "hashed", "phone"]
    assert {r.phone: r.hashed for r in hashed.collect()} == {p: psi.hash_to_group(p.encode()) for p in hub}

    def session(name, hub_hashed):
        psi_exchange.open_session(tmp_path, name, ("hub", "partner"))
        sh = psi_exchange.request(spark, tmp_path, name, "hub", hashed=hub_hashed)
        sp = psi_exchange.request(spark, tmp_path, name, "partner", partner_df)
        psi_exchange.respond(spark, tmp_path, sh, "partner")
        psi_exchange.respond(spark, tmp_path, sp, "hub")
        got_h = {r.phone: r.token for r in psi_exchange.finish(spark, tmp_path, sh, "partner").collect()}
        got_p = {r.phone: r.token for r in psi_exchange.finish(spark, tmp_path, sp, "hub").collect()}
        assert got_h == got_p and sh.matched == sp.matched == len(got_h)
        return sh, got_h

    everyone, got_all = session("all", hashed)
    assert set(got_all) == shared and everyone.sent == len(hub)
    only_consenting, got_c = session("consenting", hashed.filter(F.col("consent")))
    assert set(got_c) == shared & consenting and only_consenting.sent == len(consenting)
    assert not set(got_all.values()) & set(got_c.values())  # fresh secret per session
    hashed.unpersist()

    # Published points: each part file is sorted by point (an order that is a function of the
    # points alone), and the files together hold each point once.
    files = sorted((tmp_path / "all" / "hub.request.parquet").glob("*.parquet"))
    seen = []
    for f in files:
        points = pq.read_table(f).column("point").to_pylist()
        assert points == sorted(points)
        seen += points
    assert len(seen) == len(set(seen)) == len(hub)

    with pytest.raises(WenlvError, match="one of the two"):
        psi_exchange.request(spark, tmp_path, "all", "hub")  # neither phones nor hashed


@pytest.mark.spark
def test_spark_psi_finish_refuses_an_incomplete_answer(spark, tmp_path):
    import pyarrow.parquet as pq

    from wenlv.spark_jobs import psi_exchange

    rng = random.Random(13)
    a, b, _ = sets_with_overlap(rng, 40, 30, 10)
    psi_exchange.open_session(tmp_path, "s", ("a", "b"))
    sa = psi_exchange.request(spark, tmp_path, "s", "a", spark.createDataFrame([(p,) for p in a], "phone string"))
    sb = psi_exchange.request(spark, tmp_path, "s", "b", spark.createDataFrame([(p,) for p in b], "phone string"))
    psi_exchange.respond(spark, tmp_path, sa, "b")
    psi_exchange.respond(spark, tmp_path, sb, "a")
    # b "forgets" one of a's points: drop a row from b's response.
    folder = tmp_path / "s" / "b.response.parquet"
    part = next(p for p in sorted(folder.glob("*.parquet")) if pq.ParquetFile(p).metadata.num_rows)
    table = pq.read_table(part)
    pq.write_table(table.slice(1), part)
    (part.parent / f".{part.name}.crc").unlink(missing_ok=True)  # Hadoop's checksum of the old bytes
    with pytest.raises(psi.PsiError) as info:
        psi_exchange.finish(spark, tmp_path, sa, "b")
    message = str(info.value)
    assert f"answered {len(a) - 1} of our {len(a)}" in message
    assert not any(p in message for p in a)

    # As many rows as we sent, but one answers a point we never sent: refused too.
    import pyarrow as pa

    stranger = psi.blind(psi.hash_to_group(b"8613000000000"), psi.new_secret())
    first = table.slice(0, 1)
    forged = pa.table({"point": [stranger], "reblinded": first.column("reblinded").to_pylist()}, schema=table.schema)
    pq.write_table(pa.concat_tables([forged, table.slice(1)]), part)
    with pytest.raises(psi.PsiError) as info:
        psi_exchange.finish(spark, tmp_path, sa, "b")
    message = str(info.value)
    assert "lacks points we sent" in message and not any(p in message for p in a)
