"""HTTP for erasure: a supervisor erases a data subject, with a reason (producers/erasure.py).

The rule is the CLI's: refused (409, naming the cases and dates) while a case is open or inside
its bundle's retention period unless `override_retention` is said, which the event records.
The subject is the pseudonymous token the status page and the read audit show, never a
resident ID. Taken once per Idempotency-Key like every write.
"""
from __future__ import annotations

from fastapi import APIRouter, Body, Depends, Path
from pydantic import BaseModel, Field

from . import identity
from .api_access import supervisor
from .api_errors import MESSAGES, ApiError, ApiRoute, err
from .api_idempotency import Idempotent, idempotency_key
from .api_state import ApiState, api_state, today
from .erasure import ErasureRefused, erase

router = APIRouter(prefix="/api/v1", route_class=ApiRoute)
MESSAGES["erasure.refused"] = ("暂不能删除该数据主体的个人信息", "this subject's personal data cannot be erased yet")


class EraseIn(BaseModel):
    reason: str = Field(..., min_length=1, max_length=500)
    override_retention: bool = False


@router.post("/subjects/{subject}/erase", status_code=202, tags=["privacy"],
             summary="Erase a data subject's personal data (crypto-shredding; supervisor, with a reason)")
def erase_subject(subject: str = Path(..., min_length=8, max_length=200), body: EraseIn = Body(...),
                  ident: identity.Identity = Depends(supervisor), key: str | None = Depends(idempotency_key),
                  state: ApiState = Depends(api_state)):
    with state.database.connection() as conn, conn.transaction():
        once = Idempotent(conn, ident.subject, key, f"erase:{subject}", body.model_dump())
        if (earlier := once.replay()) is not None:
            return earlier
        try:
            event = erase(conn, lambda topic, ev: _publish(state, topic, ev), state.catalog, subject, actor=ident.actor(),
                          reason=body.reason, today=today(), override=body.override_retention)
        except ErasureRefused as exc:  # names cases and dates, never personal data
            raise ApiError(409, [err("subject", "erasure.refused") | {"detail": str(exc)}]) from None
        p = event.payload
        return once.answer({"subject": subject, "event_id": event.id, "keys_destroyed": len(p["key_ids"]),
                            "cases": p["case_ids"]})


def _publish(state: ApiState, topic: str, event) -> None:
    """Acknowledged by the broker, or a 503 that rolls the erasure back (the keys stay)."""
    try:
        state.producer.publish(topic, event)
    except Exception:
        raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
