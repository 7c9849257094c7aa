"""PSI: the group, the protocol in memory, and the same protocol run in Spark with files as messages."""
from __future__ import annotations

import random

import pytest
from nacl import bindings as sodium

from privacy import psi
from privacy.psi_align import new_run_key, user_token


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


def test_hash_to_group_lands_in_the_prime_order_subgroup():
    identity = (1).to_bytes(32, "little")
    minus_one = (psi.GROUP_ORDER - 1).to_bytes(32, "little")
    for i in range(20):
        point = psi.hash_to_group(f"8613800000{i:03d}".encode())
        assert sodium.crypto_core_ed25519_is_valid_point(point)
        # (L-1)·P + P = identity only if P has order dividing L: the cofactor is cleared.
        assert sodium.crypto_core_ed25519_add(psi.blind(point, minus_one), point) == identity


def test_hash_to_group_is_deterministic_and_domain_separated():
    x = b"8613812345678"
    assert psi.hash_to_group(x) == psi.hash_to_group(x)
    assert psi.hash_to_group(x) != psi.hash_to_group(b"8613812345679")
    plain = sodium.crypto_core_ed25519_from_uniform(__import__("hashlib").sha512(x).digest()[:32])
    assert psi.hash_to_group(x) != plain


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
        psi.blind(b"\x01" + b"\x00" * 31, psi.new_secret())  # the identity: small order, refused
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
    from spark_jobs import psi_exchange

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
