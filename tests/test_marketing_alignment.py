"""PSI alignment of the propensity features: rows meet on carrier-issued user tokens, never on phones."""
import numpy as np

from wenlv.marketing import alignment
from wenlv.privacy import psi_align

KEY = b"k" * 32


def test_partner_rows_get_the_carriers_user_token_through_psi():
    carrier = np.array([f"86138{i:08d}" for i in range(200)], dtype=object)
    partner = np.array([f"86138{i:08d}" for i in range(150, 260)], dtype=object)  # 50 shared, 60 not
    carrier_tokens = alignment.carrier_tokens(carrier, KEY)
    out = alignment.partner_tokens(partner, carrier, carrier_tokens, "test")
    shared = np.isin(partner, carrier)
    assert shared.sum() == 50 and all(t is None for t in out[~shared])
    by_phone = dict(zip(carrier, carrier_tokens))
    assert [by_phone[p] for p in partner[shared]] == list(out[shared])
    # the user token is the carrier's keyed PRF (psi_align), not a hash anyone can recompute
    assert carrier_tokens[0] == psi_align.user_token(KEY, carrier[0]) != alignment.carrier_tokens(carrier[:1], b"x" * 32)[0]
    assert all(p not in t for p, t in zip(carrier, carrier_tokens))


def test_two_runs_with_fresh_sessions_give_the_same_user_tokens_under_one_key():
    carrier = np.array([f"86139{i:08d}" for i in range(40)], dtype=object)
    partner = carrier[::3]
    tokens = alignment.carrier_tokens(carrier, KEY)
    first = alignment.partner_tokens(partner, carrier, tokens, "a")
    second = alignment.partner_tokens(partner, carrier, tokens, "b")
    assert list(first) == list(second) == list(tokens[::3])
