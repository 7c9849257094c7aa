"""Exports for the delivering partner: per-partner, per-campaign pseudonyms of the treatment group.

pseudonym = HMAC-SHA256(partner_key, token), partner_key = HMAC-SHA256(export secret,
"partner|campaign"). The partner gets its key for the campaign with the delivery order
and resolves a pseudonym by computing it for the tokens it matched in PSI; another
partner, another campaign or a reader of the file without the key cannot link it to the
cross-party token, nor two campaigns' files to each other. Only treatment members are
exported: the holdout is never contacted. Phone numbers are never involved.
"""
from __future__ import annotations

import csv
import hashlib
import hmac
import io
from pathlib import Path

from sqlalchemy import Engine

from wenlv.marketing import audience, holdout
from wenlv.marketing import campaigns as store
from wenlv.marketing.refusals import AudienceRefused
from wenlv.marketing.campaigns import PARTNER_OF_CHANNEL
from wenlv.marketing.secret_file import setting_or_private_file
from wenlv.settings import get_settings


def export_secret(path: Path | None = None) -> bytes:
    """WENLV_EXPORT_SECRET, else a 0600 file beside the SQLite database (made on first use)."""
    settings = get_settings()
    return setting_or_private_file(settings.export_secret, path or settings.database_sqlite.with_suffix(".export-secret"))


def partner_key(secret: bytes, partner: str, campaign_id: int) -> bytes:
    """The key handed to `partner` for this campaign only."""
    return hmac.new(secret, f"{partner}|{campaign_id}".encode(), hashlib.sha256).digest()


def pseudonym(key: bytes, token: str) -> str:
    return hmac.new(key, token.encode(), hashlib.sha256).hexdigest()


def resolve(key: bytes, own_tokens, pseudonyms) -> dict[str, str]:
    """The partner's side: which of its own tokens the exported pseudonyms stand for."""
    wanted = set(pseudonyms)
    return {p: t for t in own_tokens if (p := pseudonym(key, t)) in wanted}


def export_rows(engine: Engine, tenant: str, campaign_id: int, secret: bytes | None = None) -> tuple[dict, list[dict]]:
    """(campaign, rows of pseudonym and rank) for the tenant's campaign; refusals say why."""
    campaign = store.get(engine, tenant, campaign_id)
    if campaign is None:
        raise LookupError(f"campaign {campaign_id} not found")
    if campaign["status"] != "ready":
        raise AudienceRefused(f"campaign {campaign_id} has no audience yet (status {campaign['status']}); "
                              f"compute it first: POST /v1/campaigns/{campaign_id}/audience or wenlv campaign audience "
                              f"--id {campaign_id}", reason="no_audience")
    treated = audience.members(engine, campaign_id, holdout.TREATMENT)
    minimum = store.min_audience_size(engine, tenant)
    if len(treated) < minimum:
        raise AudienceRefused(f"audience too small to export: {len(treated)} treated people, the minimum for tenant "
                              f"{tenant} is {minimum}")
    key = partner_key(secret or export_secret(), PARTNER_OF_CHANNEL[campaign["channel"]], campaign_id)
    return campaign, [{"pseudonym": pseudonym(key, m["token"]), "rank": m["rank"]} for m in treated]


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=["pseudonym", "rank"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
