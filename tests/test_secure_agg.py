"""Secure aggregation: exact sums on Z_2^64, uniform masked views, key schedule, replay and dropout."""
from __future__ import annotations

import dataclasses
import os
import struct

import numpy as np
import pytest
from scipy import stats

from wenlv.privacy.audit import AuditLog
from wenlv.privacy.secure_agg import (MASK_CHUNK, Aggregator, DropoutError, Identity, MaskingParty, ProtocolError,
                                SecureAggError, decode_fixed, derive_pair_key, encode_fixed, mask_stream,
                                payload_digest)

PARTIES = ("carrier", "internet", "tourism")


def make_setup(run_id="run-1", audit=None):
    ids = {p: Identity(p) for p in PARTIES}
    pub = {p: i.public_bytes for p, i in ids.items()}
    parties = {p: MaskingParty(ids[p], PARTIES, pub) for p in PARTIES}
    agg = Aggregator(run_id, PARTIES, pub, audit=audit)
    return parties, agg


def key_round(parties, agg, round_no, run_id="run-1"):
    agg.open_round(round_no)
    for p in parties.values():
        agg.receive_key(p.announce(run_id, round_no))
    keys = agg.keys()
    for p in parties.values():
        p.receive_keys(run_id, round_no, keys)


def aggregate(parties, agg, round_no, stage, inputs, run_id="run-1", integer=False):
    agg.open_stage(stage)
    for name, p in parties.items():
        agg.submit(p.mask(run_id, round_no, stage, inputs[name], integer=integer))
    return agg.close_stage(integer=integer)


def test_fixed_point_round_trip_and_overflow():
    x = np.array([0.0, 1.0, -1.0, 3.14159, -2.0 ** 30, 2.0 ** -32])
    assert np.allclose(decode_fixed(encode_fixed(x)), x, atol=2.0 ** -33)
    with pytest.raises(SecureAggError, match="overflows"):
        encode_fixed([2.0 ** 31])
    with pytest.raises(SecureAggError, match="not finite"):
        encode_fixed([np.inf])


def test_masked_sum_is_exact_on_the_ring():
    parties, agg = make_setup()
    key_round(parties, agg, 1)
    rng = np.random.default_rng(1)
    ints = {p: rng.integers(-2**40, 2**40, size=(50, 7)) for p in PARTIES}
    total = aggregate(parties, agg, 1, "ints", ints, integer=True)
    assert np.array_equal(total, sum(ints.values()))
    reals = {p: rng.normal(scale=100, size=(50, 7)) for p in PARTIES}
    got = aggregate(parties, agg, 1, "reals", reals)
    ring_sum = sum(encode_fixed(v) for v in reals.values())  # uint64 wraparound
    assert np.array_equal(encode_fixed(got), ring_sum)
    assert np.max(np.abs(got - sum(reals.values()))) <= 3 * 2.0 ** -33


def test_every_single_message_is_masked():
    parties, agg = make_setup()
    key_round(parties, agg, 1)
    x = np.arange(100, dtype=float)
    for p in parties.values():
        msg = p.mask("run-1", 1, "s", x)
        assert np.mean(msg.payload == encode_fixed(x)) < 0.05


def test_fused_masking_matches_its_definition_and_still_refuses_overflow():
    """payload = encode(x) + Σ_{peer > me} stream − Σ_{peer < me} stream, made chunk by chunk."""
    parties, agg = make_setup()
    key_round(parties, agg, 1)
    me = parties["internet"]
    x = np.random.default_rng(5).normal(scale=1e3, size=(2 * MASK_CHUNK // 5 + 11, 5))  # 2 chunks and a bit
    msg = me.mask("run-1", 1, "s", x)
    assert msg.digest == payload_digest(msg.payload)       # streamed digest = digest of the whole
    expected = encode_fixed(x).reshape(-1).copy()
    for peer, key in me._pair_keys[("run-1", 1)].items():
        stream = mask_stream(key, "s", x.size).copy()
        expected = expected + stream if "internet" < peer else expected - stream
    assert np.array_equal(msg.payload, expected)
    flags = np.array([0, 3, 65536, 7])
    ints = me.mask("run-1", 1, "i", flags, integer=True)
    assert not np.array_equal(ints.payload, flags.astype(np.uint64))
    with pytest.raises(SecureAggError, match="element 2 has .value. ≥ 2\\^31"):
        me.mask("run-1", 1, "big", np.array([0.0, 1.0, 2.0 ** 31]))
    with pytest.raises(SecureAggError, match="element 1 is nan"):
        me.mask("run-1", 1, "nan", np.array([0.0, np.nan]))


def test_streamed_sum_is_released_whole_and_audited_with_its_digest():
    """close_stage sums, hashes and decodes chunk by chunk: the same as doing each whole."""
    audit = AuditLog()
    parties, agg = make_setup(audit=audit)
    key_round(parties, agg, 1)
    rng = np.random.default_rng(9)
    x = {p: rng.normal(size=(MASK_CHUNK // 3 + 5, 7)) for p in PARTIES}   # 2 chunks and a bit
    agg.open_stage("s")
    msgs = {p: parties[p].mask("run-1", 1, "s", x[p]) for p in PARTIES}
    for m in msgs.values():
        agg.submit(m)
    out = np.empty((MASK_CHUNK // 3 + 5, 7))
    got = agg.close_stage(out=out)
    ring = msgs["carrier"].payload + msgs["internet"].payload + msgs["tourism"].payload
    assert got.base is out or got is out
    assert np.array_equal(got, decode_fixed(ring).reshape(out.shape))
    assert np.array_equal(encode_fixed(got).reshape(-1), sum(encode_fixed(v).reshape(-1) for v in x.values()))
    assert audit.entries[-1]["kind"] == "sum" and audit.entries[-1]["digest"] == payload_digest(ring)


def test_digests_checked_at_close_reject_an_altered_payload_and_release_nothing():
    """submit_all defers payload digests to close_stage's pass (several leaves, in threads):
    one flipped bit in the second leaf of one payload aborts the round, no sum returned."""
    audit = AuditLog()
    parties, agg = make_setup(audit=audit)
    key_round(parties, agg, 1)
    agg.open_stage("s")
    n = 300_000                                            # 2.4 MB: three digest leaves
    msgs = [p.mask("run-1", 1, "s", np.full(n, 2.0)) for p in parties.values()]
    msgs[1].payload[200_000] ^= np.uint64(1 << 40)
    agg.submit_all(msgs)
    with pytest.raises(ProtocolError, match=f"{msgs[1].sender!r}: payload digest mismatch.*nothing released"):
        agg.close_stage(threads=3)
    assert not any(e["kind"] == "sum" for e in audit.entries) and audit.entries[-1]["kind"] == "round-abort"
    with pytest.raises(ProtocolError):
        agg.submit(msgs[0])                                # the aborted round accepts nothing more
    key_round(parties, agg, 2)
    agg.open_stage("s")
    agg.submit_all([p.mask("run-1", 2, "s", np.full(n, 2.0)) for p in parties.values()])
    assert np.allclose(agg.close_stage(threads=3), 6.0)


def test_replayed_and_out_of_order_messages_are_rejected():
    parties, agg = make_setup()
    key_round(parties, agg, 1)
    c, i, t = (parties[p] for p in PARTIES)
    agg.open_stage("s1")
    m = c.mask("run-1", 1, "s1", np.ones(4))
    agg.submit(m)
    with pytest.raises(ProtocolError, match="replayed"):
        agg.submit(m)                                      # duplicate in the open stage
    early = i.mask("run-1", 1, "s2", np.ones(4))
    with pytest.raises(ProtocolError, match="out-of-order"):
        agg.submit(early)                                  # a stage not opened yet
    agg.submit(i.mask("run-1", 1, "s1", np.ones(4)))
    agg.submit(t.mask("run-1", 1, "s1", np.ones(4)))
    assert np.allclose(agg.close_stage(), 3.0)
    with pytest.raises(ProtocolError, match="replayed"):
        agg.submit(m)                                      # a closed stage
    with pytest.raises(ProtocolError, match="already aggregated"):
        agg.open_stage("s1")
    with pytest.raises(ProtocolError, match="single-use"):
        c.mask("run-1", 1, "s1", np.ones(4))               # a party never reuses a stage's masks
    agg.close_round()
    key_round(parties, agg, 2)
    agg.open_stage("s1")
    with pytest.raises(ProtocolError, match="replayed message.*round 1"):
        agg.submit(m)                                      # a message of an old round
    with pytest.raises(ProtocolError, match="already used"):
        agg.open_round(1)
    forged = dataclasses.replace(m, round=2)               # header rewritten to look current
    with pytest.raises(ProtocolError, match="bad signature"):
        agg.submit(forged)
    tampered = dataclasses.replace(c.mask("run-1", 2, "s1", np.ones(4)))
    tampered.payload[0] ^= np.uint64(1)
    with pytest.raises(ProtocolError, match="digest mismatch"):
        agg.submit(tampered)
    with pytest.raises(ProtocolError, match="run"):
        agg.submit(dataclasses.replace(m, run_id="other-run"))


def test_a_header_rewritten_replay_cannot_cancel_even_if_accepted():
    """The masks themselves are bound to (run, round, stage): relabelled old masks don't cancel."""
    parties, agg = make_setup()
    key_round(parties, agg, 1)
    x = {p: np.ones(16) for p in PARTIES}
    old = {p: parties[p].mask("run-1", 1, "s1", x[p]) for p in PARTIES}
    new = {p: parties[p].mask("run-1", 1, "s2", x[p]) for p in PARTIES}
    mixed = old["carrier"].payload + new["internet"].payload + new["tourism"].payload
    assert np.max(np.abs(decode_fixed(mixed) - 3.0)) > 1.0
    honest = new["carrier"].payload + new["internet"].payload + new["tourism"].payload
    assert np.allclose(decode_fixed(honest), 3.0)


def test_dropout_aborts_without_release_and_the_round_is_rekeyed():
    audit = AuditLog()
    parties, agg = make_setup(audit=audit)
    key_round(parties, agg, 1)
    old_keys = {a.sender: a.public_key for a in agg.keys()}
    agg.open_stage("s")
    late = parties["tourism"].mask("run-1", 1, "s", np.ones(8))
    for p in ("carrier", "internet"):
        agg.submit(parties[p].mask("run-1", 1, "s", np.ones(8)))
    with pytest.raises(DropoutError, match="nothing released.*tourism"):
        agg.close_stage()
    assert not any(e["kind"] == "sum" for e in audit.entries)
    assert audit.entries[-1]["kind"] == "round-abort"
    with pytest.raises(ProtocolError):
        agg.submit(late)                                   # the aborted round accepts nothing more
    with pytest.raises(ProtocolError, match="already keyed"):
        parties["carrier"].announce("run-1", 1)            # no reuse of the aborted round's keys
    agg.open_round(2)
    anns = [p.announce("run-1", 2) for p in parties.values()]
    for ann in anns:
        agg.receive_key(ann)
        assert ann.public_key != old_keys[ann.sender]
    for p in parties.values():
        p.receive_keys("run-1", 2, agg.keys())
    assert np.allclose(aggregate(parties, agg, 2, "s", {p: np.ones(8) for p in PARTIES}), 3.0)
    assert audit.verify()


def test_missing_key_aborts_the_round():
    parties, agg = make_setup()
    agg.open_round(1)
    for name in ("carrier", "internet"):
        agg.receive_key(parties[name].announce("run-1", 1))
    with pytest.raises(DropoutError, match="no key from tourism"):
        agg.keys()


def test_forged_key_announcement_is_rejected():
    parties, agg = make_setup()
    agg.open_round(1)
    ann = parties["carrier"].announce("run-1", 1)
    forged = dataclasses.replace(ann, public_key=os.urandom(32))
    with pytest.raises(ProtocolError, match="bad signature"):
        agg.receive_key(forged)
    with pytest.raises(ProtocolError, match="bad signature"):
        parties["internet"].announce("run-1", 1)
        parties["internet"].receive_keys("run-1", 1, [forged, parties["tourism"].announce("run-1", 1)])


def test_masking_and_summing_in_threads_give_the_sequential_protocol():
    """Each party masks with a different thread count, over segments of whole rows of 7 and whole
    digest leaves (so chunks inside a segment cut leaves and rows anywhere): the masks still
    cancel exactly, every digest is the one-thread payload_digest, and a threaded close
    releases the same sum and digest."""
    from wenlv.privacy.secure_agg import _LEAF_ELEMENTS
    from wenlv.parallel import segments

    rows = 2 * _LEAF_ELEMENTS + 11                       # 7 · rows elements: 3 units of lcm(7, leaf)
    assert len(segments(7 * rows, 7 * _LEAF_ELEMENTS, 3)) == 3
    rng = np.random.default_rng(11)
    x = {p: rng.normal(scale=50, size=(rows, 7)) for p in PARTIES}
    sums = []
    for close_threads in (1, 3):
        audit = AuditLog()
        parties, agg = make_setup(audit=audit)
        key_round(parties, agg, 1)
        agg.open_stage("s")
        msgs = []
        for threads, p in zip((1, 2, 3), PARTIES):
            flat = np.ascontiguousarray(x[p], dtype=np.float64).reshape(-1)
            msg = parties[p].mask_rows("run-1", 1, "s", x[p].shape, lambda lo, hi: flat[lo:hi], threads=threads)
            assert msg.digest == payload_digest(msg.payload)
            msgs.append(msg)
        agg.submit_all(msgs)
        got = agg.close_stage(threads=close_threads)
        ring = sum(m.payload for m in msgs)
        assert np.array_equal(encode_fixed(got).reshape(-1), sum(encode_fixed(v).reshape(-1) for v in x.values()))
        assert audit.entries[-1]["digest"] == payload_digest(ring)
        sums.append(got)
    assert np.array_equal(sums[0], sums[1])
