"""Party services over mutual TLS give exactly the in-process model; strangers and replays are refused."""
from __future__ import annotations

import time

import httpx
import numpy as np
import pytest

from wenlv.privacy import tls, transport
from wenlv.privacy.secure_agg import Identity, KeyAnnouncement, MaskedMessage, MaskingParty, PartyUnavailable, ProtocolError
from wenlv.privacy.transport import Decoder, body_size, decode, encode, encode_chunks
from wenlv.training.federated_als import FederatedALS, FederatedALSParty, init_factors
from wenlv.bench.faults.party import PartyService as Service  # a party's mTLS service in a thread
from wenlv.training.remote import RemoteParty, WireStats, _Sequencer

PARTIES = ("tourism", "carrier", "internet")


def test_wire_format_round_trips_protocol_messages_in_any_pieces():
    ident = Identity("carrier")
    mp = MaskingParty(ident, ("carrier", "tourism"), {"carrier": ident.public_bytes, "tourism": b"x" * 32})
    ann = mp.announce("r", 1)
    msg = MaskedMessage("r", 1, "s", "carrier", (2, 3), np.arange(6, dtype=np.uint64), "ab" * 32, b"sig")
    obj = {"ann": ann, "msgs": [msg], "t": (1, 2.5, None, True), "a": np.eye(2), "b": b"\x00\xff",
           "empty": np.zeros((0, 3), np.float32), "big": np.arange(300_000, dtype=np.float64)}
    body = encode(obj)
    assert len(body) == body_size(obj)
    for piece in (1, 7, 1 << 16, len(body)):       # the decoder does not care how the body is cut
        d = Decoder()
        for start in range(0, len(body), piece):
            d.feed(body[start:start + piece])
        back = d.result()
        assert back["ann"] == ann and isinstance(back["ann"], KeyAnnouncement)
        assert back["msgs"][0].shape == (2, 3) and np.array_equal(back["msgs"][0].payload, msg.payload)
        assert back["t"] == (1, 2.5, None, True) and np.array_equal(back["a"], np.eye(2)) and back["b"] == b"\x00\xff"
        assert back["empty"].shape == (0, 3) and np.array_equal(back["big"], obj["big"])
    assert max(len(p) for p in encode_chunks(obj)) <= 1 << 20   # streamed in pieces, not one copy
    with pytest.raises(TypeError):
        encode(object())
    with pytest.raises(TypeError):
        encode(np.array([object()]))
    with pytest.raises(ProtocolError, match="truncated"):
        decode(body[:-1])
    with pytest.raises(ProtocolError, match="bad magic"):
        decode(b"\x80\x04pickle!!" + body)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tls")
    tls.make_deployment(folder, PARTIES, {p: ["127.0.0.1"] for p in PARTIES})
    stranger = tmp_path_factory.mktemp("stranger")   # same names, another CA
    tls.make_deployment(stranger, PARTIES)
    return folder, stranger


@pytest.fixture
def toy():
    rng = np.random.default_rng(4)
    import scipy.sparse as sp
    blocks = {p: sp.random(120, n, density=0.1, random_state=rng, format="csr", dtype=np.float32) * 4 + 0
              for p, n in zip(PARTIES, (9, 5, 7))}
    for m in blocks.values():
        m.data += 1.0
    return blocks


@pytest.mark.parametrize("ring_bits", [64, 32])
def test_remote_parties_over_mtls_equal_in_process_and_keep_their_factors(toy, certs, tmp_path, ring_bits, monkeypatch):
    folder, _ = certs
    monkeypatch.setattr(transport, "REF_MIN_BYTES", 1024)   # toy arrays are small: let them go by reference
    params = dict(factors=5, iterations=3, show_progress=False, dtype=np.float64, ring_bits=ring_bits,
                  fixed_point_bits=24)
    init = init_factors(120, {p: m.shape[1] for p, m in toy.items()}, 5, 1, np.float64)
    local = FederatedALS(**params).fit(toy, init=init)
    services = {p: Service(FederatedALSParty(p, m, state_dir=tmp_path / p), folder) for p, m in toy.items()}
    stats = WireStats()
    handles = {p: RemoteParty(p, s.url, folder, timeout=60, stats=stats) for p, s in services.items()}
    try:
        model = FederatedALS(collect_items=("tourism",), **params).fit_parties(handles, init=init)
    finally:
        for h in handles.values():
            h.close()
        for s in services.values():
            s.stop()
    assert np.array_equal(model.user_factors, local.user_factors)
    assert set(model.item_factors) == {"tourism"}
    assert np.array_equal(model.item_factors["tourism"], local.item_factors["tourism"])
    for p in ("carrier", "internet"):   # kept at home, on the party's own disk
        assert np.array_equal(np.load(model.saved_[p]), local.item_factors[p])
        assert str(tmp_path / p) in model.saved_[p]
    # a masked CG vector goes up as users × factors ring elements plus a small header
    ap1 = stats.by_stage["ap1"]
    assert ap1["calls"] == 3 * 3
    floor = 120 * 5 * ring_bits // 8
    assert floor < ap1["received"] / ap1["calls"] < floor + 2048
    # the CG start needs the user factors the parties got for their last item step: sent by
    # reference (a digest) except in the first round, where they come from the initial factors
    r0 = stats.by_stage["r0"]
    assert r0["sent"] < 3 * (120 * 5 * 8) + 6 * 2048


def test_stranger_certificate_and_replayed_request_are_refused(toy, certs, tmp_path):
    folder, stranger = certs
    party = FederatedALSParty("carrier", toy["carrier"])
    service = Service(party, folder)
    try:
        # the coordinator with another CA's certificate: the party refuses the handshake
        with pytest.raises((PartyUnavailable, ProtocolError)):
            RemoteParty("carrier", service.url, stranger, timeout=10, retries=0).describe()
        # a party presenting the wrong certificate (another CA) is refused by the coordinator
        wrong_dir = tmp_path / "mixed"
        wrong_dir.mkdir()
        for f in ("coordinator.pem", "coordinator.key"):
            (wrong_dir / f).write_bytes((folder / f).read_bytes())
        (wrong_dir / "carrier.pem").write_bytes((stranger / "carrier.pem").read_bytes())  # pin of another cert
        with pytest.raises(ProtocolError, match="TLS refused"):
            RemoteParty("carrier", service.url, wrong_dir, timeout=10, retries=0).describe()
        # the pinned name must match: the tourism pin does not open the carrier's service
        with pytest.raises(ProtocolError, match="TLS refused"):
            RemoteParty("tourism", service.url, folder, timeout=10, retries=0).describe()
        # a replayed request (same session and sequence number) is refused with 409
        good = RemoteParty("carrier", service.url, folder, timeout=10)
        assert good.describe()["name"] == "carrier"
        good._seq -= 1
        with pytest.raises(ProtocolError, match="replayed request"):
            good.describe()
        good.close()
    finally:
        service.stop()
    # a party that stays away: bounded retries, then PartyUnavailable (the round aborts)
    started = time.monotonic()
    with pytest.raises(PartyUnavailable, match="unreachable after 3 attempts"):
        RemoteParty("carrier", service.url, folder, timeout=5, retries=2, backoff=0.05).describe()
    assert time.monotonic() - started < 30


def test_replayed_masked_message_is_refused_by_the_aggregator(toy):
    """A captured signed message re-sent later (other stage or later round) never enters a sum."""
    model = FederatedALS(factors=4, iterations=2, show_progress=False, record_view=True).fit(toy)
    from wenlv.privacy.secure_agg import Aggregator
    first = model.transcript[0]
    agg = Aggregator(model.run_id_, PARTIES, {}, audit=None)
    agg.identities = {m.sender: None for m in model.transcript}   # headers are checked before signatures
    agg.open_round(first.round + 1)
    agg.open_stage(first.stage)
    with pytest.raises(ProtocolError, match="replayed"):
        agg.submit(first)


def test_the_sequencer_takes_concurrent_calls_out_of_order_but_each_number_once():
    """The feature run's two parallel psi_finish calls to the carrier (sequence 8 and 9 of one session) arrived 9
    first under load, and 8 was refused as a replay (HTTP 409): the run failed."""
    seq = _Sequencer(window=4)
    seq.check("s", 9)
    seq.check("s", 8)               # in flight at the same time, arrived second: accepted
    for seen in (8, 9):
        with pytest.raises(ProtocolError, match="replayed request"):
            seq.check("s", seen)    # a real replay: refused
    seq.check("s", 12)
    with pytest.raises(ProtocolError, match="replayed request"):
        seq.check("s", 8)           # older than the window: refused, whether seen or not
    seq.check("s", 10)              # within the window, never seen
    seq.check("other", 1)           # sessions are apart
    with pytest.raises(ProtocolError, match="replayed request"):
        seq.check("other", 0)
