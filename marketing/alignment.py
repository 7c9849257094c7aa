"""PSI alignment of the propensity features: every party's rows get the carrier-issued user token.

The feature blocks hold training-window totals, so the propensity computes its dated
features from each party's own folder (`party_features`) and aligns them with the same
protocol as the feature job: an ECDH-PSI session between each partner and the carrier hub
(privacy/psi.py) gives session tokens for the matched rows; the carrier issues each of its
subscribers a user token (privacy/psi_align.py: a keyed PRF of the phone under the
carrier's key) and tells each partner the user token of each session token it matched.
No party sees another's phone numbers, nor a hash of them; rows are then joined on tokens.

The carrier keeps its token key on its side (WENLV_CARRIER_TOKEN_KEY, else a 0600 file
beside the campaign database): as the delivering partner it must resolve an audience's
tokens long after the audience was computed. An evaluation passes a fresh key instead, so
that its tokens link to nothing outside the run.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wenlv.privacy import psi, psi_align
from wenlv.marketing.secret_file import setting_or_private_file
from wenlv.settings import get_settings


def carrier_token_key(path: Path | None = None) -> bytes:
    """The carrier's user-token key (setting, else its private file, made on first use)."""
    settings = get_settings()
    return setting_or_private_file(settings.carrier_token_key, path or settings.database_sqlite.with_suffix(".carrier-token-key"))


def carrier_tokens(phones, key: bytes) -> np.ndarray:
    """The carrier's side: the user token of each of its own subscribers' phones."""
    return np.array(psi_align.user_tokens(key, [str(p) for p in phones]), dtype=object)


def partner_tokens(partner_phones, carrier_phones, carrier_user_tokens: np.ndarray, session: str) -> np.ndarray:
    """A partner's rows -> user tokens (None where the carrier has no such subscriber), via one PSI session.

    Each side contributes only its own phones to the session; the carrier answers with the
    user tokens of the session tokens both hold, as psi_align prescribes.
    """
    session_id = f"{session}/{psi.new_session_id()}"
    partner_side, carrier_side = psi.run_in_memory(session_id, [str(p) for p in partner_phones],
                                                   [str(p) for p in carrier_phones])
    # carrier -> partner: {session token -> user token} for the rows it matched
    to_user_token = {session_token: carrier_user_tokens[i] for i, session_token in carrier_side.items()}
    out = np.full(len(partner_phones), None, dtype=object)
    for i, session_token in partner_side.items():
        out[i] = to_user_token[session_token]
    return out
