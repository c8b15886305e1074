"""The applicant's writes: submit an application (一表申报), supply materials (补正), withdraw (撤回).

Guarantees: a form with any error produces nothing and answers 422 listing every error; an
accepted application is answered 202 only after the broker acknowledged it (acks=all); if Kafka
cannot be reached the answer is 503 and the transaction that recorded the case (and its
Idempotency-Key) is rolled back. Error messages and logs never carry what a person typed.
Who may call: `filer` (an applicant's own login or a clerk) for a submission, `case_owner` for a
case of one's own (producers/api_access.py); every write takes an Idempotency-Key.
"""
from __future__ import annotations

from datetime import date
from typing import Any

import psycopg
import structlog
from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from catalog.combination import COMBINATION
from catalog.form import MergedForm, applicable_services, validate_form
from events.envelope import derived_event_id, new_event
from infra import log as infra_log
from infra.topics import APPLICATIONS

from . import e_license, identity, intake_store
from .api_access import Acting, acting_for, case_owner
from .api_catalog import ordered_departments
from .api_errors import MESSAGES, ApiError, ApiRoute, FastJSON, dedupe, err, field_error
from .api_events import locked_case, produce
from .api_forms import (UNKNOWN_REGION, combination_form, event_form, identity_checks, resolve_materials,
                        whole_numbers)
from .api_idempotency import Idempotent, idempotency_key
from .api_limits import rate_limited
from .api_observe import submitted
from .api_personal import seal_submission
from .api_state import ApiState, api_state, label

log = structlog.get_logger("producers.intake_api")
MESSAGES["application.bundle_or_services"] = (
    "请选择一个“一件事”（bundle_code），或自选若干事项（services），二者选一",
    "name a bundle (bundle_code) or pick services (services): one of the two")
router = APIRouter(prefix="/api/v1", tags=["cases"], route_class=ApiRoute)

# -- request bodies (documented in OpenAPI; values are checked by the catalog, not here) ------
MATERIALS_DOC = ('material id → {"source": "uploaded", "ref": "<ref from POST /api/v1/documents>"} | '
                 '{"source": "promised"} (容缺, non-core documents only) | {"source": "fetched"}. '
                 "E-licence materials the form needs are fetched without being named.")


class Applicant(BaseModel):
    """帮办代办: the person a clerk files for (required when the caller is a clerk)."""
    resident_id: str = Field(..., description="公民身份号码 of the applicant; never stored or echoed")


class ApplicationIn(BaseModel):
    """A bundle's application, or (随意组合) one for `services` picked freely: exactly one of the two."""
    bundle_code: str | None = Field(None, examples=["newborn"])
    services: list[str] | None = Field(None, description="随意组合: service ids picked freely, instead of a bundle; "
                                                          "the services they need are added (GET /api/v1/forms?services=…)")
    form: dict[str, Any] = Field(default_factory=dict, description="field id → value (dates YYYY-MM-DD)")
    materials: dict[str, Any] = Field(default_factory=dict, description=MATERIALS_DOC)
    applicant: Applicant | None = None


class SupplementIn(BaseModel):
    materials: dict[str, Any] = Field(default_factory=dict, description=MATERIALS_DOC)
    form: dict[str, Any] = Field(default_factory=dict, description="corrected field values")
    applicant: Applicant | None = None


class WithdrawIn(BaseModel):
    reason: str | None = Field(None, max_length=500)
    applicant: Applicant | None = None


class Accepted(BaseModel):
    case_id: str
    receipt_no: str
    status_url: str = Field(..., description="the status page; its #token fragment (read-only) opens it")
    materials: list[dict[str, Any]] = []


class _Replay(Exception):
    """A concurrent request with the same Idempotency-Key committed first."""


# -- submission -----------------------------------------------------------------------------------
@router.post("/applications", status_code=202, response_model=Accepted, summary="一表申报: submit one merged application",
             responses={422: {"description": "every error of the form, nothing produced"},
                        429: {"description": "too many submissions by this caller; see Retry-After"},
                        503: {"description": "Kafka unreachable; nothing was accepted"}})
def submit(body: ApplicationIn, ident: identity.Identity = Depends(rate_limited("submit")),
           key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)) -> JSONResponse:
    cat = state.catalog
    caller = acting_for(ident, body.applicant.resident_id if body.applicant else None)
    bundle_code, mf, target = what_is_applied_for(state, body)
    values = whole_numbers(mf, body.form)
    body_hash = intake_store.request_hash(body.model_dump())

    with state.database.connection() as conn:
        if key is not None:  # a retry of an accepted request answers at once
            if intake_store.idempotency_record(conn, ident.subject, key) is not None:
                return replay(conn, state, ident, caller, key, body_hash)
        refs, for_validation, material_errors = resolve_materials(conn, cat, mf, body.materials, values, caller,
                                                                  submission=True)
        errors = [field_error(e) for e in validate_form(cat, target, values, for_validation)]
        errors += material_errors + identity_checks(cat, values, caller)
        if errors:
            submitted("invalid")
            log.info("intake.rejected", bundle_code=bundle_code, errors=[e["code"] for e in errors],
                     paths=[e["path"] for e in errors])
            raise ApiError(422, dedupe(errors))
        region = region_of(values, conn, caller.applicant_token)
        case_id = intake_store.case_id_for(ident.subject, key)
        receipt_no = f"{region}-{date.today():%Y%m%d}-{case_id[-10:].upper()}"
        services = list(applicable_services(cat, mf, values))  # a conditional service only when it applies
        form, refs = seal_submission(conn, state, caller.applicant_token, case_id, event_form(values), refs,
                                     ordered_departments(cat, services))
        event = new_event(
            "ApplicationSubmitted", case_id,
            {"bundle_code": bundle_code, "services": services, "form": form,
             "materials": refs, "receipt_no": receipt_no, "idempotency_key": key},
            actor=ident.actor(on_behalf_of=caller.applicant_token), region_code=region, sequence=0,
            correlation_id=case_id, event_id=derived_event_id(case_id, "ApplicationSubmitted") if key else None)
        with infra_log.bound(correlation_id=case_id, case_id=case_id):
            try:
                with conn.transaction():
                    if key is not None:
                        if intake_store.claim_key(conn, ident.subject, key, body_hash, case_id) is not None:
                            raise _Replay()  # a concurrent retry won: answer with its case
                    intake_store.insert_case(
                        conn, case_id=case_id, receipt_no=receipt_no, applicant_token=caller.applicant_token,
                        bundle_code=bundle_code, services=services,
                        departments=ordered_departments(cat, services), region_code=region,
                        channel=ident.channel, staff_id=ident.staff_id)
                    state.producer.publish(APPLICATIONS, event)  # waits for acks=all; raising rolls back
            except _Replay:
                return replay(conn, state, ident, caller, key, body_hash)
            except psycopg.Error:
                raise
            except Exception as exc:
                submitted("unavailable")
                log.error("intake.kafka_unavailable", error=type(exc).__name__, bundle_code=bundle_code)
                raise ApiError(503, [err("", "kafka.unavailable")], {"Retry-After": "5"}) from None
            submitted("accepted")
            log.info("intake.accepted", bundle_code=bundle_code, channel=ident.channel,
                     role=ident.role, staff_id=ident.staff_id, materials=len(refs),
                     promised=sum(1 for r in refs if r["source"] == "promised"))
    return FastJSON(accepted_body(state, case_id, receipt_no, caller.applicant_token, refs), status_code=202)


def what_is_applied_for(state: ApiState, body: ApplicationIn) -> tuple[str, MergedForm, str | list[str]]:
    """(the case's bundle_code, its merged form, what validate_form checks against) — a bundle, or a
    free combination (`COMBINATION`, catalog/combination.py) validated the same way; 422 naming
    what is wrong (which service, why) otherwise."""
    cat = state.catalog
    if (body.bundle_code is None) == (body.services is None):
        submitted("invalid")
        raise ApiError(422, [err("bundle_code", "application.bundle_or_services")])
    if body.services is not None:
        try:
            mf = combination_form(state, body.services)
        except ApiError:
            submitted("invalid")
            raise
        return COMBINATION, mf, list(body.services)
    if body.bundle_code not in cat.bundles:
        submitted("invalid")
        raise ApiError(422, [err("bundle_code", "bundle.unknown")])
    b = cat.bundles[body.bundle_code]
    if not (b.modelled and b.members):
        submitted("invalid")
        raise ApiError(422, [err("bundle_code", "bundle.not_available")])
    return body.bundle_code, state.merged_form(body.bundle_code), body.bundle_code


def case_form(state: ApiState, bundle_code: str, services: list[str]) -> tuple[MergedForm, str | list[str]]:
    """A case's merged form, a bundle's or a free combination's (its services as submitted)."""
    if bundle_code == COMBINATION:
        return state.catalog.merged_form(services=services), list(services)
    return state.merged_form(bundle_code), bundle_code


def region_of(values: dict[str, Any], conn: psycopg.Connection, applicant_token: str) -> str:
    rc = values.get("region_code")
    if isinstance(rc, str) and len(rc) == 6 and rc.isdigit():
        return rc
    household = e_license.wallet(conn, applicant_token).first("household_register")
    return household.data.get("region_code", UNKNOWN_REGION) if household else UNKNOWN_REGION


def accepted_body(state: ApiState, case_id: str, receipt_no: str, applicant_token: str,
                  refs: list[dict[str, Any]] | None) -> dict[str, Any]:
    """The receipt: its status link carries a read-only token for this case only."""
    link_token = identity.status_link_token(applicant_token, case_id)
    out = {"case_id": case_id, "receipt_no": receipt_no, "status_url": f"/status/{case_id}#token={link_token}",
           "materials": []}
    for r in refs or ():
        m = state.catalog.materials.get(r["code"])
        out["materials"].append({"code": r["code"], "source": r["source"], "label": label(m.label) if m else None})
    return out


def replay(conn: psycopg.Connection, state: ApiState, ident: identity.Identity, caller: Acting, key: str,
           body_hash: str) -> JSONResponse:
    row = conn.execute(
        "SELECT i.request_hash, c.case_id, c.receipt_no, c.applicant_token FROM intake_idempotency i "
        "JOIN intake_cases c USING (case_id) WHERE i.caller_token = %s AND i.idempotency_key = %s",
        (ident.subject, key)).fetchone()
    if row is None or row[0] != body_hash or row[3] != caller.applicant_token:
        submitted("invalid")
        raise ApiError(422, [err("idempotency-key", "idempotency.key_reused")])
    submitted("replayed")
    log.info("intake.replayed", case_id=row[1])
    return FastJSON(accepted_body(state, row[1], row[2], row[3], None), status_code=202,
                    headers={"Idempotent-Replayed": "true"})


# -- the case's own writes ----------------------------------------------------------------------------
@router.post("/cases/{case_id}/materials", status_code=202, summary="补正: supply missing or corrected materials and fields")
def supplement(case_id: str, body: SupplementIn = Body(...), who: Acting = Depends(case_owner),
               key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)) -> JSONResponse:
    cat = state.catalog
    with state.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
        with conn.transaction():
            once = Idempotent(conn, who.ident.subject, key, f"materials:{case_id}", body.model_dump())
            earlier = once.replay()
            if earlier is not None:
                return earlier
            row = locked_case(conn, state, case_id)
            if not body.materials and not body.form:
                raise ApiError(422, [err("materials", "supplement.empty")])
            mf, target = case_form(state, row.bundle_code, list(row.services))
            values = whole_numbers(mf, body.form)
            refs, _, errors = resolve_materials(conn, cat, mf, body.materials, values, who, submission=False)
            asked = {f"fields.{k}" for k in values}
            errors += [field_error(e) for e in validate_form(cat, target, values, {}) if e.path in asked]
            errors += identity_checks(cat, values, who)
            if errors:
                raise ApiError(422, dedupe(errors))
            form, refs = seal_submission(conn, state, who.applicant_token, case_id, event_form(values), refs,
                                         row.departments)
            event = produce(conn, state, APPLICATIONS, case_id, "MaterialsSupplemented",
                            {"materials": refs, "form": form},
                            who.ident.actor(on_behalf_of=who.applicant_token), row.region_code,
                            event_id=once.event_id())
            return once.answer({"case_id": case_id, "event_id": event.id, "sequence": event.envelope.sequence})


@router.post("/cases/{case_id}/withdraw", status_code=202, summary="Withdraw the application (撤回)")
def withdraw(case_id: str, body: WithdrawIn | None = Body(None), who: Acting = Depends(case_owner),
             key: str | None = Depends(idempotency_key), state: ApiState = Depends(api_state)) -> JSONResponse:
    body = body or WithdrawIn()
    with state.database.connection() as conn, infra_log.bound(correlation_id=case_id, case_id=case_id):
        with conn.transaction():
            once = Idempotent(conn, who.ident.subject, key, f"withdraw:{case_id}", body.model_dump())
            earlier = once.replay()
            if earlier is not None:
                return earlier
            row = locked_case(conn, state, case_id)
            event = produce(conn, state, APPLICATIONS, case_id, "ApplicationWithdrawn", {"reason": body.reason},
                            who.ident.actor(on_behalf_of=who.applicant_token), row.region_code, status="withdrawn",
                            event_id=once.event_id())
            return once.answer({"case_id": case_id, "event_id": event.id, "sequence": event.envelope.sequence})
