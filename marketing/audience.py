"""Computing and storing a campaign's audience: filters, top-N, holdout arms, planned contacts.

One transaction per computation, under the tenant's cap lock (see `caps`): read who is
capped, select the top N eligible people, keep the arm of anyone who was already a member
(else the seeded hash decides), replace the member rows and the campaign's planned
contacts (treatment only: the holdout is never contacted). A refusal rolls everything
back, so a refused recomputation leaves the previous audience in place.
"""
from __future__ import annotations

import logging
from datetime import datetime, timezone

import numpy as np
import pandas as pd
from sqlalchemy import Engine, delete, func, insert, select

from wenlv.db.schema import audience_members
from wenlv.marketing import caps, holdout
from wenlv.marketing import campaigns as store
from wenlv.marketing.campaigns import PARTNER_OF_CHANNEL
from wenlv.marketing.refusals import AudienceRefused
from wenlv.marketing.select import faiss_top_k, numpy_top_k
from wenlv.marketing.targets import Candidates, Query

log = logging.getLogger(__name__)

REGION_UNKNOWN = ("these candidates carry no home city — affinity and lookalike targets take it from the carrier's "
                  "user_features block, and the blocks given have no home_city column (the carrier.user_features "
                  "contract leaves it out); destination campaigns (the carrier's own as-of features) can be "
                  "limited to a region")


def compute(engine: Engine, campaign: dict, candidates: Candidates, query: Query, *, min_size: int | None = None,
            now: datetime | None = None, method: str = "faiss") -> dict:
    """Build and store the audience of `campaign`; returns sizes and why people were left out."""
    now = now or datetime.now(timezone.utc)
    tenant, cid = campaign["tenant"], campaign["id"]
    min_size = store.min_audience_size(engine, tenant) if min_size is None else min_size
    n = len(candidates.tokens)
    consented = candidates.consent[campaign["channel"]]
    partner = PARTNER_OF_CHANNEL[campaign["channel"]]
    if consented.sum() < min_size:
        raise AudienceRefused(f"consent coverage: only {int(consented.sum())} of {n} candidates consented to "
                              f"{campaign['channel']} delivery by the {partner}; the minimum audience is {min_size}",
                              reason="consent_coverage")
    if campaign["region"] is not None and candidates.home_city is None:
        raise AudienceRefused(f"region {campaign['region']!r} cannot be honoured: {REGION_UNKNOWN}", reason="region")
    mask = consented & caps.region_mask(candidates.home_city, campaign["region"], n)
    if query.exclude is not None:
        mask &= ~query.exclude
    in_region = int(mask.sum())
    at = caps.contact_time(campaign["starts_on"])
    with engine.begin() as c:
        caps.lock_tenant(c, tenant, cid)
        capped = caps.capped_tokens(c, tenant, at, campaign["cap_contacts"], campaign["cap_days"], except_campaign=cid)
        if capped:
            mask &= ~pd.Index(candidates.tokens, dtype=object).isin(list(capped))  # object: hashed, not looped
        eligible = int(mask.sum())
        if method == "faiss":
            rows, scores = faiss_top_k(candidates.index, query.vector, campaign["audience_size"], mask)
        else:
            rows, scores = numpy_top_k(candidates.vectors, query.vector, campaign["audience_size"], mask)
        if campaign["min_score"] is not None:
            keep = scores >= campaign["min_score"]
            rows, scores = rows[keep], scores[keep]
        tokens = candidates.tokens[rows]
        previous = dict(c.execute(select(audience_members.c.token, audience_members.c.arm)
                                  .where(audience_members.c.campaign_id == cid)).all())
        arm = holdout.arms(campaign["holdout_seed"], tokens, campaign["holdout_fraction"])
        kept = np.array([previous.get(t, a) for t, a in zip(tokens, arm)], dtype=object)
        treated = tokens[kept == holdout.TREATMENT]
        if len(treated) < min_size:
            why = (f"{in_region} consented in the region, {len(capped)} at their frequency cap, "
                   f"{len(rows)} scored high enough")
            raise AudienceRefused(f"audience too small: {len(treated)} treated people, the minimum is {min_size} "
                                  f"({why})", reason="min_size")
        c.execute(delete(audience_members).where(audience_members.c.campaign_id == cid))
        prospect = candidates.is_prospect[rows]
        c.execute(insert(audience_members), [
            {"campaign_id": cid, "token": t, "arm": a, "score": float(s), "rank": i + 1, "is_prospect": bool(p),
             "computed_at": now} for i, (t, a, s, p) in enumerate(zip(tokens, kept, scores, prospect))])
        caps.replace_contacts(c, tenant, cid, campaign["channel"], treated, at)
        store.set_status(c, cid, "ready", candidates.model_version)
    summary = {"campaign_id": cid, "audience_size": int(len(tokens)), "treatment_size": int(len(treated)),
               "holdout_size": int(len(tokens) - len(treated)),
               "prospect_share": round(float(prospect.mean()), 4) if len(tokens) else 0.0,
               "candidates": n, "consented": int(consented.sum()), "in_region": in_region, "capped": len(capped),
               "eligible": eligible, "model_version": candidates.model_version, **query.note}
    log.info("campaign %s: audience %d (%d treated, %d holdout)", cid, summary["audience_size"],
             summary["treatment_size"], summary["holdout_size"])
    return summary


def members(engine: Engine, campaign_id: int, arm: str | None = None) -> list[dict]:
    query = select(audience_members).where(audience_members.c.campaign_id == campaign_id)
    if arm is not None:
        query = query.where(audience_members.c.arm == arm)
    with engine.connect() as c:
        return [dict(r) for r in c.execute(query.order_by(audience_members.c.rank)).mappings()]


def arm_counts(engine: Engine, campaign_id: int) -> dict[str, int]:
    with engine.connect() as c:
        rows = c.execute(select(audience_members.c.arm, func.count()).where(audience_members.c.campaign_id == campaign_id)
                         .group_by(audience_members.c.arm)).all()
    return {holdout.TREATMENT: 0, holdout.HOLDOUT: 0} | {a: int(k) for a, k in rows}
