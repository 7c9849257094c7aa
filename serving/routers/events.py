"""POST /v1/events: impressions, clicks, bookings and visits into the revenue ledger.

The visitor app (and admin) posts batches; the tenant is the key's. The answer comes only
after the batch is committed (durable: SQLite WAL with synchronous=FULL, PostgreSQL's
synchronous commit), so an acknowledged event survives a crash. The route is a plain
`def`: FastAPI runs it in its thread pool, so the database write never blocks the event loop.
"""
from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import Engine
from sqlalchemy.exc import OperationalError

from wenlv.ledger.events import BatchTooLarge, record_events
from wenlv.serving.auth import ApiError, Principal, require_role
from wenlv.serving.database import get_db
from wenlv.serving.schemas import ERROR_RESPONSES
from wenlv.settings import get_settings

router = APIRouter(prefix="/v1", tags=["events"])
poster = require_role("visitor-app")


class EventBatch(BaseModel):
    events: list[Any] = Field(description="impression, click, booking or visit events, each checked on its own: "
                                          "event_id, kind, token, poi_id, amount_cny (booking, visit), occurred_at "
                                          "(ISO 8601 with a time zone), recommendation_id or campaign_id")


class Rejection(BaseModel):
    index: int = Field(description="position in the batch")
    event_id: str | None
    reason: str = Field(description="which field was wrong and why")


class Flag(BaseModel):
    index: int = Field(description="position in the batch")
    event_id: str
    reason: str = Field(description="what is doubtful about the event (it was stored)")


class EventsAck(BaseModel):
    accepted: int = Field(description="stored now (durable)")
    duplicates: int = Field(description="already stored (a retry): acknowledged, not stored again")
    rejected: list[Rejection] = Field(description="not stored, one entry per bad event; the others were kept")
    flagged: list[Flag] = Field(description="stored now (counted in accepted) but unattributed for the moment: a "
                                            "recommendation_id no list served to this tenant carries")


@router.post("/events", response_model=EventsAck, summary="record a batch of events (durable when answered)",
             description="Partial success is normal: good events are stored, bad ones listed with reasons. "
                         "Resend a batch whose answer you did not get: event_id makes the retry harmless.",
             responses={**ERROR_RESPONSES, 413: {"description": "more events than WENLV_EVENTS_MAX_BATCH"},
                        503: {"description": "the ledger database is unavailable; nothing was acknowledged"}})
def post_events(request: Request, batch: EventBatch = Body(...), principal: Principal = Depends(poster),
                engine: Engine = Depends(get_db)):
    try:
        result = record_events(engine, principal.tenant, batch.events, max_batch=get_settings().events_max_batch)
    except BatchTooLarge as exc:
        raise ApiError(413, "batch_too_large", str(exc))
    except OperationalError:
        raise ApiError(503, "ledger_unavailable", "the ledger database is unavailable; resend the batch shortly",
                       {"Retry-After": "1"})
    request.app.state.metrics.count_events(len(result.accepted), len(result.duplicates), len(result.rejected))
    return JSONResponse(result.as_dict())  # the response model documents it; re-validating it costs time per batch
